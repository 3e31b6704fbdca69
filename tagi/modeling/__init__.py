"""The method, in pure torch (no Lightning): LoRA on T5's q/v sites, the hypernetwork that writes it
from an instruction, instruction fusion and fusion-in-decoder, PEFT adapter I/O, and the losses."""
