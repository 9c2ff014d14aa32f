"""The MMDiT's attention one head at a time, as a diffusers attention processor.

diffusers' `JointAttnProcessor2_0` hands all heads to one `scaled_dot_product_attention`; for
SD3 Medium at 512x512 that is 24 heads x 1,178 x 1,178 scores (about 64 MiB in fp16) at once,
twice the on-chip memory of a recent Neural Engine, where one head's scores are about 2.6 MiB
(docs/TOOL_FACTS.md, "The Neural Engine"). `SplitHeadsJointAttnProcessor` computes the same
function with each head's scores on their own: per head, softmax(q k^T / sqrt(d)) v, the heads
concatenated, as Apple's ml-stable-diffusion does for UNets (SPLIT_EINSUM). Everything around
the scores (projections, qk norms, the joint concatenation of image and text tokens, the output
projections) is diffusers' own code path, so the stage's inputs and outputs are unchanged.
docs/ATTENTION.md says what it costs and what only a Mac can tell.
"""

import torch
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0
from torch import nn

from sd3coreml.errors import PipelineError


class SplitHeadsJointAttnProcessor:
    """`JointAttnProcessor2_0`'s semantics (no mask, no dropout), the scores computed per head.

    Serves both attentions of an SD3.5 block: the joint one (`attn`, with the text stream as
    `encoder_hidden_states`) and the image-only second one of MMDiT-X blocks (`attn2`).
    """

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        if attention_mask is not None:
            raise PipelineError("the per-head attention takes no mask; the MMDiT's joint attention has none")
        image_tokens = hidden_states.shape[1]
        query = self.heads(attn, attn.to_q(hidden_states), attn.norm_q)
        key = self.heads(attn, attn.to_k(hidden_states), attn.norm_k)
        value = self.heads(attn, attn.to_v(hidden_states), None)
        if encoder_hidden_states is not None:
            query = torch.cat([query, self.heads(attn, attn.add_q_proj(encoder_hidden_states), attn.norm_added_q)], 1)
            key = torch.cat([key, self.heads(attn, attn.add_k_proj(encoder_hidden_states), attn.norm_added_k)], 1)
            value = torch.cat([value, self.heads(attn, attn.add_v_proj(encoder_hidden_states), None)], 1)

        # The scale (1/sqrt(d), SDPA's default) goes on the queries once, not on each head's
        # scores: one op per attention.
        query = query * (attn.inner_dim // attn.heads) ** -0.5
        heads = []
        for head in range(attn.heads):
            scores = torch.matmul(query[:, :, head], key[:, :, head].transpose(-1, -2))
            heads.append(torch.matmul(scores.softmax(dim=-1), value[:, :, head]))
        hidden_states = torch.cat(heads, dim=-1)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :image_tokens], hidden_states[:, image_tokens:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return hidden_states if encoder_hidden_states is None else (hidden_states, encoder_hidden_states)

    @staticmethod
    def heads(attn: Attention, projected, norm):
        """(batch, tokens, heads * d) -> (batch, tokens, heads, d), normalised per head where the
        model has qk norms (SD3.5): the norm runs over the last axis, as in diffusers' processor."""
        batched = projected.view(projected.shape[0], -1, attn.heads, attn.inner_dim // attn.heads)
        return batched if norm is None else norm(batched)


def split_attention_per_head(module: nn.Module) -> nn.Module:
    """Every attention of `module`'s joint blocks (`attn`, and `attn2` where a block has one)
    computed one head at a time; refuses a processor it does not know, rather than replace it."""
    attentions = [child for child in module.modules() if isinstance(child, Attention)]
    if not attentions:
        raise PipelineError(f"{type(module).__name__} holds no attention to split per head")
    for attention in attentions:
        if not isinstance(attention.processor, JointAttnProcessor2_0):
            raise PipelineError(
                f"an attention of {type(module).__name__} runs {type(attention.processor).__name__}, not diffusers' "
                "JointAttnProcessor2_0, which the per-head split mirrors; convert it with attention joint"
            )
        attention.set_processor(SplitHeadsJointAttnProcessor())
    return module
