"""The toy comparison: supervised KD against on-policy distillation on the slip-addition task.

  make demo-slip  # trains both from the same student init, then prints one table:
                  # gkd-jax train --config=configs/demo.py --workdir=workdirs/demo_slip/supervised_kd \
                  #     --config.gkd.lmbda=0
                  # gkd-jax train --config=configs/demo.py --workdir=workdirs/demo_slip/on_policy
                  # gkd-jax compare workdirs/demo_slip/supervised_kd workdirs/demo_slip/on_policy

(`make demo`, the main job, is configs/prune_and_distill.py on a real model.)

The bundled teacher (4 layers) learnt addition from a corpus in which ~10% of the steps slip and are
corrected in place ("7+8+1=15/16"); the student (2 layers) was SFT'd on clean data only. Supervised KD
distils the teacher on the clean completions; on-policy GKD (λ=1, forward KL) on the student's own
samples, where the student's slips happen and the teacher shows how to repair them. Accuracy is exact
match of the (correction-resolved) final sum on 1000 held-out problems, greedy and at temperature 1.
configs/paper_table.py is the full comparison (more methods, seeds, equal-time columns).
"""

from configs import paper_table


def get_config():
  c = paper_table.get_config()
  c.train.num_steps = 300
  c.train.eval_every = 0  # before and after only
  c.train.checkpoint_every = 100
  c.eval.num_samples = 1
  return c
