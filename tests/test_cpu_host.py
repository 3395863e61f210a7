"""A host without a TPU, libtpu installed (the `tpu` extra): `import gkd_jax` keeps jax from trying
the TPU (whose libtpu logs INVALID_ARGUMENT ... TPU_WORKER_HOSTNAMES), and leaves every choice the
user made and every host that may have a TPU or a GPU as it is (tpu_topology.avoid_absent_tpu)."""

import os
import subprocess
import sys
import types

import pytest
from jax._src import hardware_utils

from gkd_jax import tpu_topology


def test_tpu_pci_ids_are_jaxs():
  assert tpu_topology.GOOGLE_PCI_VENDOR == hardware_utils._GOOGLE_PCI_VENDOR_ID
  assert tpu_topology.TPU_PCI_DEVICE_IDS == set(hardware_utils._TPU_PCI_DEVICE_IDS)


class FakeJax:
  """A jax already imported whose backends have not started: records config updates."""

  def __init__(self, platforms=None):
    self.updates = []
    self.config = types.SimpleNamespace(
        jax_platforms=platforms, update=lambda *a: self.updates.append(a)
    )


@pytest.fixture
def cpu_host_with_libtpu(monkeypatch):
  for name in (
      *tpu_topology.PLATFORM_CHOICES,
      "TPU_LIBRARY_PATH",
  ):  # jax's import of libtpu sets it
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(tpu_topology, "libtpu_available", lambda: True)
  monkeypatch.setattr(tpu_topology, "tpu_attached", lambda: False)
  monkeypatch.setattr(tpu_topology, "other_pjrt_plugins", lambda: False)
  fake = FakeJax()
  monkeypatch.setitem(sys.modules, "jax", fake)
  return fake


def test_selects_the_cpu_before_jax_is_imported(cpu_host_with_libtpu, monkeypatch):
  monkeypatch.delitem(sys.modules, "jax")
  tpu_topology.avoid_absent_tpu()
  assert os.environ["JAX_PLATFORMS"] == "cpu"


def test_selects_the_cpu_in_an_imported_jax(cpu_host_with_libtpu):
  tpu_topology.avoid_absent_tpu()
  assert cpu_host_with_libtpu.updates == [("jax_platforms", "cpu")]
  assert "JAX_PLATFORMS" not in os.environ


@pytest.mark.parametrize(
    "change",
    [
        "JAX_PLATFORMS=",
        "JAX_PLATFORMS=tpu",
        "JAX_FORCE_TPU_INIT=1",
        "jax_platforms",
        "tpu",
        "plugin",
        "no libtpu",
    ],
)
def test_leaves_choices_and_other_hosts_alone(change, cpu_host_with_libtpu, monkeypatch):
  if "=" in change:
    monkeypatch.setenv(*change.split("="))
  elif change == "jax_platforms":
    cpu_host_with_libtpu.config.jax_platforms = "tpu,cpu"
  else:
    attr = {"tpu": "tpu_attached", "plugin": "other_pjrt_plugins", "no libtpu": "libtpu_available"}
    monkeypatch.setattr(tpu_topology, attr[change], lambda: change != "no libtpu")
  before = os.environ.get("JAX_PLATFORMS")
  tpu_topology.avoid_absent_tpu()
  assert cpu_host_with_libtpu.updates == [] and os.environ.get("JAX_PLATFORMS") == before


@pytest.mark.parametrize("code", ["import gkd_jax, jax", "import jax, gkd_jax"])
def test_no_tpu_initialisation_error_on_this_host(code):
  """The real thing, in a fresh process with no platform chosen."""
  if not tpu_topology.libtpu_available():
    pytest.skip("libtpu is not installed: jax does not try the TPU")
  if tpu_topology.tpu_attached() or tpu_topology.other_pjrt_plugins():
    pytest.skip("this host may have a TPU or a GPU: jax is left to choose")
  env = {k: v for k, v in os.environ.items() if k not in tpu_topology.PLATFORM_CHOICES}
  script = f"{code}; print(jax.devices()[0].platform)"
  r = subprocess.run(
      [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
  )
  assert r.returncode == 0 and r.stdout.strip() == "cpu", r
  assert "TPU_WORKER_HOSTNAMES" not in r.stderr and "INVALID_ARGUMENT" not in r.stderr, r.stderr
