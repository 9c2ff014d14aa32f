"""The original SD3/SD3.5 key layout (`joint_blocks.*`, as Stability ships it) from diffusers'.

The exact inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`: it gives
the original-layout tensor table a config implies (checked before normalising) and writes
original-layout files from diffusers ones (for tests and round-trip checks).
"""

from sd3coreml.errors import PipelineError

# original name -> diffusers name, for the tensors outside the joint blocks (each with
# .weight and .bias); the final norm's halves are swapped separately.
GLOBAL_RENAMES = {
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "context_embedder": "context_embedder",
    "final_layer.linear": "proj_out",
}
# Inside joint_blocks.N (original) and transformer_blocks.N (diffusers).
BLOCK_RENAMES = {
    "x_block.attn.proj": "attn.to_out.0",
    "x_block.adaLN_modulation.1": "norm1.linear",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
}
# The last block's context stream only feeds attention (context_pre_only): these exist
# only in the blocks before it.
CONTEXT_RENAMES = {
    "context_block.attn.proj": "attn.to_add_out",
    "context_block.adaLN_modulation.1": "norm1_context.linear",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
}
QKV_PARTS = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
# SD3.5: the query/key RMSNorm scales (weights only), in every block when the config sets qk_norm.
QK_NORM_RENAMES = {
    "x_block.attn.ln_q": "attn.norm_q",
    "x_block.attn.ln_k": "attn.norm_k",
    "context_block.attn.ln_q": "attn.norm_added_q",
    "context_block.attn.ln_k": "attn.norm_added_k",
}
# SD3.5 Medium: the image stream's second self-attention, in the blocks that have one.
DUAL_ATTENTION_QKV = ("x_block.attn2.qkv", ("attn2.to_q", "attn2.to_k", "attn2.to_v"))
DUAL_ATTENTION_RENAMES = {"x_block.attn2.proj": "attn2.to_out.0"}
DUAL_ATTENTION_NORMS = {"x_block.attn2.ln_q": "attn2.norm_q", "x_block.attn2.ln_k": "attn2.norm_k"}


def _block_count(names, prefix: str) -> int:
    return len({name.split(".")[1] for name in names if name.startswith(prefix)})


def original_layout_state_dict(diffusers_state: dict) -> dict:
    """The original-layout state dict of a diffusers SD3 state dict (meta tensors work too).

    The exact inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`:
    q, k, v are concatenated into qkv, and the halves of the final norms' linear layers
    (the last block's context norm and `norm_out`) are swapped back, since the original
    code splits them as (shift, scale) and diffusers as (scale, shift).
    """
    import torch
    from diffusers.loaders.single_file_utils import swap_scale_shift

    remaining = dict(diffusers_state)
    depth = _block_count(remaining, "transformer_blocks.")
    original = {}

    def take(name: str):
        if name not in remaining:
            raise PipelineError(f"the diffusers SD3 state dict has no tensor {name}; is the file complete?")
        return remaining.pop(name)

    def move(original_name: str, diffusers_name: str, transform=lambda tensor: tensor) -> None:
        for kind in ("weight", "bias"):
            original[f"{original_name}.{kind}"] = transform(take(f"{diffusers_name}.{kind}"))

    def swapped(tensor):
        # swap_scale_shift exchanges the two halves, so it is its own inverse.
        return swap_scale_shift(tensor, dim=None)

    original["pos_embed"] = take("pos_embed.pos_embed")
    for original_name, diffusers_name in GLOBAL_RENAMES.items():
        move(original_name, diffusers_name)
    move("final_layer.adaLN_modulation.1", "norm_out.linear", swapped)
    for index in range(depth):
        block, source = f"joint_blocks.{index}.", f"transformer_blocks.{index}."
        last = index == depth - 1
        dual = f"{source}attn2.to_q.weight" in remaining
        qkv_parts = {**QKV_PARTS, **dict([DUAL_ATTENTION_QKV])} if dual else QKV_PARTS
        for original_name, parts in qkv_parts.items():
            for kind in ("weight", "bias"):
                pieces = [take(f"{source}{part}.{kind}") for part in parts]
                original[f"{block}{original_name}.{kind}"] = torch.cat(pieces, dim=0)
        renames = {**BLOCK_RENAMES, **DUAL_ATTENTION_RENAMES} if dual else BLOCK_RENAMES
        for original_name, diffusers_name in renames.items():
            move(block + original_name, source + diffusers_name)
        norms = {**QK_NORM_RENAMES, **DUAL_ATTENTION_NORMS} if dual else QK_NORM_RENAMES
        for original_name, diffusers_name in norms.items():
            if f"{source}{diffusers_name}.weight" in remaining:
                original[f"{block}{original_name}.weight"] = take(f"{source}{diffusers_name}.weight")
        if last:
            move(block + "context_block.adaLN_modulation.1", source + "norm1_context.linear", swapped)
        else:
            for original_name, diffusers_name in CONTEXT_RENAMES.items():
                move(block + original_name, source + diffusers_name)
    if remaining:
        raise PipelineError(
            f"the original SD3 layout has no place for {len(remaining)} tensors, e.g. {sorted(remaining)[:3]}; "
            "is this an SD3-family transformer?"
        )
    return original
