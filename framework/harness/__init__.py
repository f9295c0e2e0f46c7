"""Standard-benchmark evaluation with lm-evaluation-harness (no Ray): the student served by
tokenbridge's own vLLM engines as a harness model (`lm.py`), tokenbridge's prompt sources as harness
tasks (`tasks.py`), and the ``tokenbridge-eval`` command (`cli.py`)."""
