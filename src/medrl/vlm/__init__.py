"""GRPO for medical vision-language models: tasks from brain templates, rewards, training.

Needs the ``vlm`` extra (transformers, trl, datasets, peft, accelerate, pillow) for training;
:mod:`medrl.vlm.boxes`, :mod:`medrl.vlm.parsing` and :mod:`medrl.vlm.rewards` need only numpy.
"""
