"""The app's contract: the names, ids and constants MobileDiffuser (bfe2f28, branch MCL) relies on.

One home for what the client's Swift code spells (SD3PipelineLoader.swift, ModelResourceManager.swift,
ml-stable-diffusion's StableDiffusion3Pipeline.swift, TextEncoderXL.swift, BPETokenizer.swift):
folder entry names, feature names, token ids, sizes it hard-codes, the VAE's latent scale and
shift. docs/APP_CONTRACT.md is its prose; tests/contract/ holds it at the demo's and full size.
"""

import re

CLIENT = {"repo": "TWWinde/MobileDiffuser", "commit": "bfe2f28a5a814619447081fbe6ef4b91d5919eb0", "branch": "MCL"}

# Folder entries (without suffix): the app lists Stage<int> and runs them in numeric order.
STAGE = "MultiModalDiffusionTransformerStage{index}"
STAGE_PREFIX = "MultiModalDiffusionTransformerStage"
CONDITIONING = "MultiModalDiffusionTransformerConditioning"
VAE_DECODER = "VAEDecoder"
TEXT_ENCODERS = {"TextEncoder": "text_encoder", "TextEncoder2": "text_encoder_2"}  # entry -> SD3 component folder
TOKENIZER_FILES = ("vocab.json", "merges.txt")
# Leading zeros refused: `Stage01` would sort as 1 in the app but is no contract name.
STAGE_NAME = re.compile(rf"{STAGE_PREFIX}(0|[1-9][0-9]*)(\.mlpackage|\.mlmodelc)")
# Files that switch the app to AdaLN stages, which no longer take modulation_inputs.
ADALN_FILE = re.compile(r"MultiModalDiffusionTransformerAdaLN(Stage\d+)?\.(mlmodelc|mlpackage)")

# CLIP's tokens, as the app feeds them (float32 ids, which fp16 cannot hold past 2048).
CLIP_VOCAB_SIZE = 49408
BOS, EOS = 49406, 49407
MAX_TOKENS = 77  # CLIP's context; the app pads every prompt to it
# What the app pads each text encoder's ids with, and its CLIP id (SD3PipelineLoader.swift:
# CLIP-L's BPETokenizer pads with its default, CLIP-G's with `padToken: "!"`).
APP_PADDING = {"TextEncoder": ("<|endoftext|>", EOS), "TextEncoder2": ("!", 0)}
# The `eos_token_id` of OpenAI's and LAION's CLIP configs (SD3 Medium's too), which
# transformers reads as "pool at the largest id" (its PR #24773).
LEGACY_EOS_TOKEN_ID = 2

# Sizes encodePrompt hard-codes: CLIP-L and CLIP-G hidden states side by side, then a zero
# padding of [1, 77, 2048] to a joint width of 4096, zero T5 slots [1, 4096, 1, 77]; the pooled
# outputs concatenated to [1, 2048, 1, 1].
APP_JOINT_WIDTH = 4096
APP_CLIP_HIDDEN_WIDTH = 2048
APP_POOLED_WIDTH = 2048
APP_TEXT_TOKENS = 2 * MAX_TOKENS  # 77 CLIP + 77 zero T5 slots
# The app feeds the first input of these and reads the first output of the VAE and the last stage.
ONE_INPUT = ("TextEncoder", "TextEncoder2", VAE_DECODER)

# Feature names. The app feeds and reads the MMDiT's and the text encoders' outputs by these
# names (StableDiffusion3Pipeline.swift); the inputs and outputs it takes by position (above)
# are named here too, so that every package and every check spells them alike.
INPUT_IDS = "input_ids"
HIDDEN_EMBEDS = "hidden_embeds"
POOLED_OUTPUTS = "pooled_outputs"
POOLED_TEXT_EMBEDDINGS = "pooled_text_embeddings"
TIMESTEP = "timestep"
MODULATION_INPUTS = "modulation_inputs"
LATENT_IMAGE_EMBEDDINGS = "latent_image_embeddings"
TOKEN_LEVEL_TEXT_EMBEDDINGS = "token_level_text_embeddings"
# Stage0..N-1 return their two embeddings under these names; the app feeds them to the next
# stage under the names without `_out`.
LATENT_IMAGE_EMBEDDINGS_OUT = "latent_image_embeddings_out"
TOKEN_LEVEL_TEXT_EMBEDDINGS_OUT = "token_level_text_embeddings_out"
STAGE_OUTPUTS = (LATENT_IMAGE_EMBEDDINGS_OUT, TOKEN_LEVEL_TEXT_EMBEDDINGS_OUT)
NOISE_PRED = "noise_pred"  # the last stage's one output
VAE_LATENT = "z"
VAE_IMAGE = "image"

# The VAE decoder is fed `latent / scale + shift` (done by the app).
VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR = 1.5305, 0.0609
