"""TAGI: Task Adapters Generation from Instructions.

A hypernetwork reads a task's instruction once and writes LoRA weights for a T5 model
(see ../shared/DESIGN.md in the development checkout, and README.md).
"""

__version__ = "0.1.0"
