"""The key/value chunking reference the sweep's summary shows beside the split per head."""

from sd3coreml.sweep.kv_chunking import chunk_counts, ops_per_attention, reference_lines


def test_sd3_mediums_keys_allow_2_chunks_and_31_for_a_head_sized_chunk():
    # 1,178 keys = 2 x 19 x 31: argmaxtools' default of 4 does not divide them.
    assert chunk_counts(24, 1178) == [2, 31]
    assert [ops_per_attention(n) for n in (2, 19, 31)] == [34, 204, 324]
    lines = reference_lines((24, 1178, 1178, 2))
    assert "one head's scores 2.65 MiB" in lines[0]
    assert lines[2:] == ["- 2 chunks: about 34 ops per attention, 31.76 MiB of scores per chunk",
                         "- 31 chunks: about 324 ops per attention, 2.05 MiB of scores per chunk"]  # fmt: skip


def test_no_attention_no_reference_and_a_prime_key_count_one_line():
    assert reference_lines(None) == []
    assert chunk_counts(4, 13) == [13]  # 13 keys: only 13 chunks divide them, and 13 >= 4 heads
