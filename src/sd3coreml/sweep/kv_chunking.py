"""The peer's key/value chunking as a reference point beside the attention split per head.

MobileDiffuser's low-memory conversion converts DiffusionKit's MMDiT with `--sdpa-mode splitkv`:
all heads in each op, keys and values cut into n chunks combined by a lazy softmax (argmaxtools'
`SplitKV`, which asserts that n divides the key count). Not built here; docs/ATTENTION.md counts
its ops from that code, about 10n + 14 per attention before coremltools' transposes, and each
chunk's scores are heads x queries x keys/n. The sweep's summary shows those estimates for the
stages' own attention shape, so a user sees the trade beside the split's measured ops.
"""

MIB = 1 << 20


def ops_per_attention(chunks: int) -> int:
    return 10 * chunks + 14


def chunk_counts(heads: int, keys: int) -> list[int]:
    """The chunk counts worth showing: the fewest that divide the keys, and the fewest whose chunk's
    scores are no larger than one head's (the split per head's), where the keys allow them."""
    divisors = [n for n in range(2, keys + 1) if keys % n == 0]
    fewest = divisors[:1]
    per_head = [n for n in divisors if n >= heads][:1]
    return sorted(set(fewest + per_head))


def reference_lines(shape: tuple[int, int, int, int] | None) -> list[str]:
    """Markdown lines of the estimate for (heads, queries, keys, bytes per score) (program_stats'
    `attention_shape`); none without attention."""
    if shape is None:
        return []
    heads, queries, keys, score_bytes = shape
    one_head = queries * keys * score_bytes / MIB
    lines = [f"Not built (docs/ATTENTION.md): estimates for this sweep's attention ({heads} heads, {queries} queries, "
             f"{keys} keys; one head's scores {one_head:.2f} MiB).", ""]  # fmt: skip
    for chunks in chunk_counts(heads, keys):
        scores = heads * queries * (keys // chunks) * score_bytes / MIB
        lines.append(f"- {chunks} chunks: about {ops_per_attention(chunks)} ops per attention, {scores:.2f} MiB of scores per chunk")
    return lines
