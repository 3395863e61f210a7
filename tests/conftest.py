"""Test setup: 8 fake CPU devices for mesh tests, libtpu for compile-only TPU tests (before jax is
imported)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu (compile-only TPU tests): no lock file shared between the parallel test workers, and no
# GCE metadata queries (this host is not a TPU VM).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)
