"""`python -m ib_jax.evaluate`: the documented alias of the eval job, `python -m ib_jax.eval`
(ib_jax/eval/__main__.py has its flags, ib_jax/eval/job.py the job)."""

from __future__ import annotations

from ib_jax.eval.__main__ import run_program

if __name__ == "__main__":
    run_program()
