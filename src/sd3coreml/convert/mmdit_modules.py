"""The SD3 MMDiT (SD3 Medium, SD3.5) cut into the app's pieces, built from diffusers' own submodules.

`SD3Transformer2DModel.forward` runs as: conditioning (`time_text_embed`), input embedding
(`pos_embed`, `context_embedder`), the joint blocks, then the head (`norm_out`, `proj_out`,
unpatchify). The app runs Conditioning once per step, then Stage0..N in order, so each piece
here takes and returns exactly the tensors of its entry in docs/APP_CONTRACT.md ("What a
folder holds"). Each piece is built on the meta device and receives only its own tensors from
the checkpoint.
"""

import torch
from diffusers.models.attention import JointTransformerBlock
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings, PatchEmbed
from diffusers.models.normalization import AdaLayerNormContinuous
from torch import nn

from sd3coreml.inputs.checkpoint import load_tensors
from sd3coreml.inputs.geometry import MMDiTShape


class MMDiTConditioning(nn.Module):
    """`time_text_embed(timestep, pooled)`: the modulation input every block and the head read."""

    def __init__(self, shape: MMDiTShape):
        super().__init__()
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(shape.width, shape.pooled_projection_dim)

    def forward(self, pooled_text_embeddings, timestep):
        pooled = pooled_text_embeddings.flatten(1)
        return self.time_text_embed(timestep, pooled)


class MMDiTInputStage(nn.Module):
    """Stage0: patch + cropped positional embedding of the latent, and `context_embedder`.

    It takes `modulation_inputs` without using it so that every stage has the same inputs,
    as the app feeds them.
    """

    def __init__(self, shape: MMDiTShape):
        super().__init__()
        self.pos_embed = PatchEmbed(
            height=shape.sample_size,
            width=shape.sample_size,
            patch_size=shape.patch_size,
            in_channels=shape.in_channels,
            embed_dim=shape.width,
            pos_embed_max_size=shape.pos_embed_max_size,
        )
        self.context_embedder = nn.Linear(shape.joint_attention_dim, shape.caption_projection_dim)

    def forward(self, latent_image_embeddings, token_level_text_embeddings, modulation_inputs):
        image = self.pos_embed(latent_image_embeddings)
        # The app passes text as (1, C, 1, T), the layout of Apple's SD pipelines.
        text = token_level_text_embeddings.squeeze(2).transpose(1, 2)
        return image, self.context_embedder(text)


class MMDiTBlockRange(nn.Module):
    """Joint blocks [start, end); the range that ends the transformer also carries the head."""

    def __init__(self, shape: MMDiTShape, start: int, end: int):
        super().__init__()
        self.shape = shape
        self.start, self.end = start, end
        self.transformer_blocks = nn.ModuleDict(
            {
                str(index): JointTransformerBlock(
                    dim=shape.width,
                    num_attention_heads=shape.heads,
                    attention_head_dim=shape.head_dim,
                    context_pre_only=index == shape.depth - 1,
                    qk_norm=shape.qk_norm,
                    use_dual_attention=index in shape.dual_attention_layers,
                )
                for index in range(start, end)
            }
        )
        if self.has_head:
            self.norm_out = AdaLayerNormContinuous(shape.width, shape.width, elementwise_affine=False, eps=1e-6)
            self.proj_out = nn.Linear(shape.width, shape.patch_size**2 * shape.out_channels)

    @property
    def has_head(self) -> bool:
        return self.end == self.shape.depth

    def forward(self, latent_image_embeddings, token_level_text_embeddings, modulation_inputs):
        image, text = latent_image_embeddings, token_level_text_embeddings
        for block in self.transformer_blocks.values():
            text, image = block(hidden_states=image, encoder_hidden_states=text, temb=modulation_inputs)
        if not self.has_head:
            return image, text
        image = self.proj_out(self.norm_out(image, modulation_inputs))
        return self.unpatchify(image)

    def unpatchify(self, tokens):
        s = self.shape
        # Rows are left to reshape (-1), so a trace on one row of patches converts to any
        # latent height: a full-size trace would run the whole fp16 forward on the CPU.
        cols = s.latent_width // s.patch_size
        patches = tokens.reshape(1, -1, cols, s.patch_size, s.patch_size, s.out_channels)
        patches = torch.einsum("nhwpqc->nchpwq", patches)
        return patches.reshape(1, s.out_channels, -1, s.latent_width)


def load_module_weights(module: nn.Module, weights_path, dtype=torch.float32) -> nn.Module:
    """Fill a meta-device module with exactly its own tensors from the checkpoint."""
    names = list(module.state_dict().keys())
    module.load_state_dict(load_tensors(weights_path, names, dtype), strict=True, assign=True)
    return module.eval()


def build_conditioning(shape: MMDiTShape, weights_path, dtype=torch.float32) -> MMDiTConditioning:
    with torch.device("meta"):
        module = MMDiTConditioning(shape)
    return load_module_weights(module, weights_path, dtype)


def build_input_stage(shape: MMDiTShape, weights_path, dtype=torch.float32) -> MMDiTInputStage:
    with torch.device("meta"):
        module = MMDiTInputStage(shape)
    return load_module_weights(module, weights_path, dtype)


def build_block_range(shape: MMDiTShape, start: int, end: int, weights_path, dtype=torch.float32) -> MMDiTBlockRange:
    with torch.device("meta"):
        module = MMDiTBlockRange(shape, start, end)
    return load_module_weights(module, weights_path, dtype)
