"""Shape flags shared by commands that take a model shape (`bench throughput`, `train`, ...).

A command declares the options with these annotated types and passes them to
``spec_from_options``:

    def cmd(spec: SpecArg = None, d_model: DModel = None, n_layers: Layers = None, ...):
        arch = spec_from_options(spec, d_model=d_model, n_layers=n_layers, ...)

A preset or spec file gives the base shape and any flag overrides one field of it; without one,
``--d-model --layers --heads --d-ff`` are required and the rest have defaults.
"""

from __future__ import annotations

from typing import Annotated

import typer

from archscale.arch.frameworks import load_spec
from archscale.arch.spec import ArchSpec, SpecError

SpecArg = Annotated[str | None, typer.Argument(
    help="Preset name (e.g. tiny, llama-3.2-1b) or a spec / HF config JSON file; "
         "omit it to give the shape with the flags.", show_default=False)]
DModel = Annotated[int | None, typer.Option("--d-model", help="Hidden size.", show_default=False)]
Layers = Annotated[int | None, typer.Option("--layers", help="Decoder blocks.", show_default=False)]
Heads = Annotated[int | None, typer.Option("--heads", help="Query heads.", show_default=False)]
KVHeads = Annotated[int | None, typer.Option(
    "--kv-heads", help="Key/value heads (default: --heads, i.e. no GQA).", show_default=False)]
HeadDim = Annotated[int | None, typer.Option(
    "--head-dim", help="Width of one head (default: d_model / heads).", show_default=False)]
DFF = Annotated[int | None, typer.Option("--d-ff", help="SwiGLU inner width.", show_default=False)]
Vocab = Annotated[int | None, typer.Option(
    "--vocab", help="Vocabulary size (default 256, the byte-level tokenizer).", show_default=False)]
SeqLen = Annotated[int | None, typer.Option(
    "--seq-len", help="Training context length (default 256).", show_default=False)]
Tie = Annotated[bool | None, typer.Option(
    "--tie/--untie", help="Tie input and output embeddings (default: tied).", show_default=False)]

DEFAULT_VOCAB = 256
DEFAULT_SEQ_LEN = 256


def spec_from_options(spec: str | None = None, *, d_model: int | None = None,
                      n_layers: int | None = None, n_heads: int | None = None,
                      n_kv_heads: int | None = None, head_dim: int | None = None,
                      d_ff: int | None = None, vocab_size: int | None = None,
                      seq_len: int | None = None, tie_embeddings: bool | None = None) -> ArchSpec:
    """The ArchSpec named by a preset/file and/or the shape flags (flags override the file)."""
    flags = {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads,
             "n_kv_heads": n_kv_heads, "head_dim": head_dim, "d_ff": d_ff,
             "vocab_size": vocab_size, "seq_len": seq_len, "tie_embeddings": tie_embeddings}
    given = {name: value for name, value in flags.items() if value is not None}
    if spec is not None:
        return load_spec(spec).replace(**given)
    names = {"d_model": "--d-model", "n_layers": "--layers", "n_heads": "--heads", "d_ff": "--d-ff"}
    missing = [flag for name, flag in names.items() if name not in given]
    if missing:
        raise SpecError(f"no preset or spec file given, so the shape flags {missing} are required "
                        "(or name a preset, e.g. 'tiny')")
    if head_dim is None:
        if d_model % n_heads:
            raise SpecError(f"--d-model {d_model} is not divisible by --heads {n_heads}: "
                            "give --head-dim explicitly")
        given["head_dim"] = d_model // n_heads
    given.setdefault("n_kv_heads", n_heads)
    given.setdefault("vocab_size", DEFAULT_VOCAB)
    given.setdefault("seq_len", DEFAULT_SEQ_LEN)
    return ArchSpec(**given)
