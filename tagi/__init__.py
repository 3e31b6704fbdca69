"""TAGI: Task Adapters Generation from Instructions.

A hypernetwork reads a task's instruction once and writes LoRA weights for a T5 model
(docs/ARCHITECTURE.md: the method, the stages and the layout; README.md: how to run it).
"""

__version__ = "0.1.0"
