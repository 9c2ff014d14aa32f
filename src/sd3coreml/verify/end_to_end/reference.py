"""The reference for the end-to-end check: stock diffusers and transformers, nothing of ours.

`StableDiffusion3Pipeline` with no T5 (its slots are zeros, as `encode_prompt` makes them)
runs the whole `SD3Transformer2DModel` under `FlowMatchEulerDiscreteScheduler` with the app's
timestep shift and sigmas, guidance 1, from the app chain's initial latent; `AutoencoderKL.decode`
makes the image from what the app decodes, the last step's denoised prediction. The prompt
enters as the app's token ids: the pipeline's tokenizers hand those to the stock encoders
(`AppIds`), so the artifacts are judged on the app's own input, not on what Hugging Face's
tokenizer would make. Forward hooks record what the transformer computes at each stage
boundary of a layout, so a wrong stage in a folder is found by name.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from sd3coreml.contract import MAX_TOKENS
from sd3coreml.inputs.tokenizer import load_clip_tokenizer
from sd3coreml.verify.end_to_end.chain_record import ChainRecord
from sd3coreml.verify.end_to_end.sampler import unshifted_sigmas


class AppIds:
    """What diffusers' pipeline calls as a tokenizer, answering with the ids the app feeds."""

    model_max_length = MAX_TOKENS

    def __init__(self, ids: list[int]):
        self.input_ids = torch.tensor([ids], dtype=torch.long)

    def __call__(self, prompt, **kwargs):
        return SimpleNamespace(input_ids=self.input_ids)


def load_pipeline(weights: Path, config: Path, components: Path, shift: float):
    """`shift`: the app's timestep shift (`models.<name>.timestep_shift`)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from safetensors.torch import load_file
    from transformers import CLIPTextModelWithProjection

    transformer = SD3Transformer2DModel.from_config(json.loads(Path(config).read_text()))
    transformer.load_state_dict(load_file(str(weights)), strict=True)
    encoders = [
        CLIPTextModelWithProjection.from_pretrained(str(Path(components) / name), dtype=torch.float32)
        for name in ("text_encoder", "text_encoder_2")
    ]
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer.float().eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        vae=AutoencoderKL.from_pretrained(str(Path(components) / "vae"), torch_dtype=torch.float32).eval(),
        text_encoder=encoders[0].eval(),
        tokenizer=load_clip_tokenizer(Path(components) / "tokenizer"),
        text_encoder_2=encoders[1].eval(),
        tokenizer_2=load_clip_tokenizer(Path(components) / "tokenizer_2"),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class StageBoundaryHooks:
    """Record, per transformer call, the modulation and the tokens after each stage."""

    def __init__(self, transformer, block_ranges: list[tuple[int, int]], record: ChainRecord):
        self.record, self.step, self.stage0 = record, -1, {}
        self.handles = [
            transformer.register_forward_pre_hook(self.next_step),
            transformer.time_text_embed.register_forward_hook(
                self.save("MultiModalDiffusionTransformerConditioning.mlpackage")
            ),
            transformer.pos_embed.register_forward_hook(self.save_stage0("image")),
            transformer.context_embedder.register_forward_hook(self.save_stage0("text")),
            transformer.register_forward_hook(self.save_noise_pred(len(block_ranges))),
        ]
        for index, (_, end) in enumerate(block_ranges[:-1], start=1):
            block = transformer.transformer_blocks[end - 1]
            self.handles.append(block.register_forward_hook(self.save_block_output(index)))

    def next_step(self, module, args):
        self.step += 1

    def save(self, name):
        return lambda module, args, output: self.record.put(self.step, name, output.detach())

    def save_stage0(self, part):
        def hook(module, args, output):
            self.stage0[part] = output.detach()
            if len(self.stage0) == 2:
                tokens = torch.cat([self.stage0.pop("text"), self.stage0.pop("image")], dim=1)
                self.record.put(self.step, "MultiModalDiffusionTransformerStage0.mlpackage", tokens)

        return hook

    def save_block_output(self, stage_index):
        def hook(module, args, output):
            text, image = output
            tokens = torch.cat([text, image], dim=1).detach()
            self.record.put(self.step, f"MultiModalDiffusionTransformerStage{stage_index}.mlpackage", tokens)

        return hook

    def save_noise_pred(self, last_index):
        name = f"MultiModalDiffusionTransformerStage{last_index}.mlpackage"
        return lambda module, args, output: self.record.put(self.step, name, output[0].detach())

    def remove(self):
        for handle in self.handles:
            handle.remove()


def run_reference(pipeline, prompt: str, ids: dict, noise: np.ndarray, steps: int, block_ranges) -> ChainRecord:
    """The stock pipeline on `prompt`, tokenized as the app does: `ids` per text encoder."""
    record = ChainRecord()
    pipeline.tokenizer, pipeline.tokenizer_2 = AppIds(ids["TextEncoder"]), AppIds(ids["TextEncoder2"])
    with torch.no_grad():
        prompt_embeds, _, pooled, _ = pipeline.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            prompt_3=None,
            do_classifier_free_guidance=False,
            max_sequence_length=MAX_TOKENS,
        )
        record.put(None, "prompt_embeds", prompt_embeds)
        record.put(None, "pooled_projections", pooled)
        hooks = StageBoundaryHooks(pipeline.transformer, block_ranges, record)
        last_call = {}
        last_call_hook = pipeline.transformer.register_forward_hook(
            lambda module, args, kwargs, output: last_call.update(latent=kwargs["hidden_states"], velocity=output[0]),
            with_kwargs=True,
        )
        try:
            latent = pipeline(
                prompt_embeds=prompt_embeds,
                pooled_prompt_embeds=pooled,
                guidance_scale=1.0,
                num_inference_steps=steps,
                sigmas=list(unshifted_sigmas(steps)),
                latents=torch.from_numpy(noise),
                height=noise.shape[2] * pipeline.vae_scale_factor,
                width=noise.shape[3] * pipeline.vae_scale_factor,
                output_type="latent",
                max_sequence_length=MAX_TOKENS,
            ).images
        finally:
            hooks.remove()
            last_call_hook.remove()
        record.put(None, "final_latent", latent)
        # What the app decodes (app_chain.run_app_chain): the last step's x - sigma * v.
        sigma = pipeline.scheduler.sigmas[steps - 1]
        decoded = last_call["latent"].float() - sigma * last_call["velocity"].float()
        record.put(None, "decoded_latent", decoded)
        vae = pipeline.vae
        image = vae.decode(decoded / vae.config.scaling_factor + vae.config.shift_factor).sample
        record.put(None, "image", image)
    return record
