"""The one list of training settings.

Every face of LoRA Studio (TOML files, command-line overrides, validation messages, presets and the GUI's widgets)
is generated from ``SETTINGS``. Names are sd-scripts' names so that an sd-scripts config runs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .optimizers import OPTIMIZER_NAMES

# Kinds of value a setting holds. Each kind has one parser in ``config.values``.
STR, PATH, INT, FLOAT, BOOL = "str", "path", "int", "float", "bool"
STR_LIST = "str_list"  # ["k=v", ...] or a table {k = v}
FLOAT_OR_LIST = "float_or_list"  # 1e-4 or [1e-4, 5e-5] (one value per text encoder)
INT_OR_RATIO = "int_or_ratio"  # 100 steps, or 0.1 = 10% of the total steps
RESOLUTION = "resolution"  # "512" or "512,768" (width,height)


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str
    default: Any
    label: str
    help: str
    group: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False
    advanced: bool = False  # shown under Parameters > Advanced in the GUI
    suggestions: tuple | None = None  # common values offered in the GUI; other values are allowed too
    families: tuple[str, ...] | None = None  # the model families it applies to (None: every family)


def _s(name, kind, default, label, help, group, **kw) -> Setting:
    return Setting(name, kind, default, label, help, group, **kw)


SETTINGS: tuple[Setting, ...] = (
    # ---- model ----
    _s("pretrained_model_name_or_path", PATH, None, "Pretrained model name or path",
       "Base model: a single-file .safetensors checkpoint (A1111 style) or a diffusers folder.", "model",
       required=True),
    _s("allow_pickle", BOOL, False, "Allow pickle model files",
       "Open .ckpt/.pt/.bin model files (pickle can run code; they are read with weights_only=True). Only for files "
       "you trust; .safetensors needs no such switch.", "model", advanced=True),
    _s("vae", PATH, None, "VAE", "Optional VAE to use instead of the model's own (.safetensors file or diffusers folder). "
       "SD3: its 16-channel VAE when the checkpoint has none; Anima: the Qwen-Image VAE (qwen_image_vae.safetensors), "
       "which it needs.", "model"),
    _s("no_half_vae", BOOL, False, "No half VAE",
       "Keep the VAE in float32 (the SDXL VAE overflows to NaN in fp16; LoRA Studio then switches to float32 by "
       "itself).", "model", advanced=True),
    _s("v2", BOOL, False, "v2", "The base model is Stable Diffusion 2.x.", "model"),
    _s("v_parameterization", BOOL, False, "v_parameterization",
       "The base model predicts v: SD2.x 768-v models (with v2) and v-prediction SDXL models (NoobAI-XL v-pred and "
       "its merges); usually with Zero terminal SNR.", "model"),
    _s("clip_skip", INT, 1, "Clip skip", "Use the output of the N-th last text-encoder layer (2 for anime models).",
       "model", minimum=1, maximum=12, advanced=True),
    _s("max_token_length", INT, 75, "Max Token Length",
       "Caption length in tokens; 150 or 225 encode long captions in 75-token chunks.", "model",
       choices=(75, 150, 225), advanced=True),
    # ---- folders ----
    _s("train_data_dir", PATH, None, "Image folder",
       "Folder that holds the training subfolders named N_name (N = repeats, name = class tokens), "
       "e.g. img/10_emi person/.", "folders"),
    _s("reg_data_dir", PATH, None, "Regularisation folder",
       "Optional folder of regularisation subfolders (N_class), used with prior_loss_weight.", "folders"),
    _s("dataset_config", PATH, None, "Dataset config file",
       "An sd-scripts dataset TOML ([general], [[datasets]], [[datasets.subsets]]). Replaces the image folders.",
       "folders"),
    _s("in_json", PATH, None, "Metadata file (fine-tuning JSON)",
       "sd-scripts' fine-tuning metadata: a JSON of image name -> caption and tags (merge_captions_to_metadata). "
       "With it, every image it names in the Image folder trains with its caption, instead of N_name subfolders.",
       "folders", advanced=True),
    _s("dataset_repeats", INT, 1, "Dataset repeats", "Repeats of the images of a metadata file (in_json).",
       "folders", minimum=1, maximum=100_000, advanced=True),
    _s("conditioning_data_dir", PATH, None, "Mask folder (conditioning_data_dir)",
       "Masked loss: a folder of mask images named like the training images (the same N_name subfolders, or all "
       "in one folder); white trains, black is ignored.", "folders", advanced=True),
    _s("output_dir", PATH, None, "Output directory", "Where the .safetensors files, samples and logs go.", "folders",
       required=True),
    _s("output_name", STR, "last", "Trained Model output name",
       "File name of the LoRA without extension; also its name in A1111 (<lora:name:1>).", "folders"),
    _s("logging_dir", PATH, None, "Logging folder", "Write TensorBoard scalars here (leave empty for none).",
       "folders"),
    _s("log_with", STR, None, "Log with",
       "Where the scalars go: tensorboard (the Logging folder; the default when it is set), wandb (Weights & "
       "Biases; pip install wandb; WANDB_MODE=offline for offline runs) or all.", "folders",
       choices=("tensorboard", "wandb", "all"), advanced=True),
    _s("log_prefix", STR, None, "Log prefix",
       "Name of this run's folder in the Logging folder: the prefix, then the date and time.", "folders",
       advanced=True),
    _s("log_tracker_name", STR, None, "Log tracker name", "The W&B project (default network_train).", "folders",
       advanced=True),
    _s("log_tracker_config", PATH, None, "Log tracker config",
       "A TOML file of the trackers' own settings ([wandb] name, tags, entity ...).", "folders", advanced=True),
    _s("wandb_run_name", STR, None, "WANDB run name", "The W&B run's name.", "folders", advanced=True),
    _s("log_config", BOOL, False, "Log config",
       "Send the run's settings to the trackers (W&B config, a TensorBoard text), without keys and without the "
       "paths of your models, images and folders, as sd-scripts does.", "folders", advanced=True),
    _s("wandb_api_key", STR, None, "WANDB API key",
       "Log in to W&B with this key (or set WANDB_API_KEY). Never written to the saved config or the LoRA file.",
       "folders", advanced=True),
    _s("training_comment", STR, None, "Training comment", "Free text stored in the LoRA's metadata.", "folders"),
    # ---- dataset ----
    _s("resolution", RESOLUTION, "512", "Max resolution", "Training resolution: \"512\" or \"width,height\".",
       "dataset"),
    _s("train_batch_size", INT, 1, "Train batch size", "Images per step on each GPU.", "dataset", minimum=1,
       maximum=1024),
    _s("enable_bucket", BOOL, False, "Enable buckets",
       "Aspect-ratio buckets: train images of different shapes without cropping them square.", "dataset"),
    _s("min_bucket_reso", INT, 256, "Minimum bucket resolution", "Smallest bucket side in pixels.", "dataset",
       minimum=64, maximum=8192),
    _s("max_bucket_reso", INT, 1024, "Maximum bucket resolution", "Largest bucket side in pixels.", "dataset",
       minimum=64, maximum=8192),
    _s("bucket_reso_steps", INT, 64, "Bucket resolution steps", "Bucket sides are multiples of this (8 or more).",
       "dataset", minimum=8, maximum=512, advanced=True),
    _s("bucket_no_upscale", BOOL, False, "Don't upscale bucket resolution",
       "Small images get a bucket of their own size instead of being enlarged.", "dataset", advanced=True),
    _s("caption_extension", STR, ".txt", "Caption file extension", "Extension of the caption file beside each image.",
       "dataset"),
    _s("shuffle_caption", BOOL, False, "Shuffle caption", "Shuffle the comma-separated tags of each caption.",
       "dataset", advanced=True),
    _s("keep_tokens", INT, 0, "Keep n tokens", "Keep the first N tags in place when shuffling or dropping tags.",
       "dataset", minimum=0, maximum=255, advanced=True),
    _s("keep_tokens_separator", STR, "", "Keep tokens separator",
       "With shuffle: tags before this mark stay first, tags after a second mark stay last (\"a, b ||| c, d ||| e\").",
       "dataset", advanced=True),
    _s("caption_separator", STR, ",", "Caption separator", "What separates the tags of a caption.", "dataset",
       advanced=True),
    _s("secondary_separator", STR, None, "Secondary separator",
       "Tags joined by this move together when shuffled, then it becomes the caption separator (\";;;\").",
       "dataset", advanced=True),
    _s("enable_wildcard", BOOL, False, "Enable wildcard",
       "{red|blue} in a caption becomes one of its choices each time; a caption file with several lines gives one "
       "line at random.", "dataset", advanced=True),
    _s("caption_prefix", STR, None, "Caption prefix", "Put before every caption (a trigger word, say).", "dataset",
       advanced=True),
    _s("caption_suffix", STR, None, "Caption suffix", "Put after every caption.", "dataset", advanced=True),
    _s("weighted_captions", BOOL, False, "Weighted captions",
       "Read A1111 emphasis in captions: (word) x1.1, ((word)) x1.21, [word] /1.1, (word:1.3); \\( \\) for literal "
       "brackets. Each token's text-encoder output is scaled by its weight. Keep commas out of the brackets when "
       "shuffling or dropping tags (they split the brackets).", "dataset", advanced=True),
    _s("caption_dropout_every_n_epochs", INT, 0, "Dropout caption every n epochs",
       "Train without captions every N-th epoch (0 = never).", "dataset", minimum=0, maximum=10000, advanced=True),
    _s("token_warmup_step", FLOAT, 0.0, "Token warmup step",
       "Captions grow from Token warmup min tags to all of them over this many steps (below 1: this share of the "
       "run); 0 = off.", "dataset", minimum=0.0, maximum=1e7, advanced=True),
    _s("token_warmup_min", INT, 1, "Token warmup min", "Tags a caption starts with during the token warm-up.",
       "dataset", minimum=1, maximum=1000, advanced=True),
    _s("caption_dropout_rate", FLOAT, 0.0, "Rate of caption dropout",
       "Probability of training an image with an empty caption.", "dataset", minimum=0.0, maximum=1.0, advanced=True),
    _s("caption_tag_dropout_rate", FLOAT, 0.0, "Rate of caption tag dropout",
       "Probability of dropping each tag (except the kept ones).", "dataset", minimum=0.0, maximum=1.0, advanced=True),
    _s("flip_aug", BOOL, False, "Flip augmentation", "Randomly mirror images left-right (not for asymmetric subjects).",
       "dataset", advanced=True),
    _s("color_aug", BOOL, False, "Color augmentation",
       "Now and then shift an image's hue a little or apply a gamma, as sd-scripts does (turns latent caching off).",
       "dataset", advanced=True),
    _s("random_crop", BOOL, False, "Random crop",
       "Crop a random part of an image that is larger than its bucket instead of its centre (turns latent caching "
       "off).", "dataset", advanced=True),
    _s("alpha_mask", BOOL, False, "Alpha mask",
       "Use each image's transparency as its loss mask: transparent pixels do not train.", "dataset",
       advanced=True),
    _s("cache_latents", BOOL, False, "Cache latents",
       "Encode every image with the VAE once, before training: faster steps, less VRAM.", "dataset"),
    _s("cache_latents_to_disk", BOOL, False, "Cache latents to disk",
       "Keep the latent cache on disk so the next run skips encoding (implies cache_latents).", "dataset"),
    _s("vae_batch_size", INT, None, "VAE batch size",
       "Images the VAE encodes at once when caching latents (and when encoding them each step): more is faster and "
       "needs more memory (empty = up to 4, a megapixel's worth: one image at a time at 1024 px, so caching never "
       "needs more GPU memory than training).", "dataset", minimum=1, maximum=256, advanced=True),
    _s("cache_text_encoder_outputs", BOOL, False, "Cache text encoder outputs",
       "Encode every caption once before training (needs frozen text encoders and fixed captions): faster steps, "
       "less VRAM; the SDXL low-VRAM setting.", "dataset", advanced=True),
    _s("cache_text_encoder_outputs_to_disk", BOOL, False, "Cache text encoder outputs to disk",
       "Keep the text-encoder cache on disk for the next run (implies cache_text_encoder_outputs).", "dataset",
       advanced=True),
    _s("max_data_loader_n_workers", INT, 0, "Max num workers for DataLoader",
       "Background processes that load images (0 = load in the training process).", "dataset", minimum=0,
       maximum=64, advanced=True),
    _s("persistent_data_loader_workers", BOOL, False, "Persistent data loader",
       "Keep the data loader's worker processes between epochs instead of starting them again each epoch (faster "
       "epochs, more memory; needs Max num workers above 0).", "dataset", advanced=True),
    _s("prior_loss_weight", FLOAT, 1.0, "Prior loss weight", "Loss weight of regularisation images.", "dataset",
       minimum=0.0, maximum=100.0, advanced=True),
    # ---- network ----
    _s("network_module", STR, "networks.lora", "Network module",
       "The module that trains the adapter (the LoRA type on the Basic tab sets it, and Network args). "
       "networks.lora: LoRA (LoCon with conv_dim in Network args). networks.lora_fa: LoRA-FA (only the up weights "
       "train). networks.dylora: DyLoRA (unit=N in Network args). lycoris.kohya: the LyCORIS types, chosen with "
       "algo=locon|loha|lokr|ia3|dylora|glora|diag-oft|boft|full in Network args (dora_wd=true for DoRA). "
       "networks.lora_flux, lora_sd3, lora_anima, lora_lumina: sd-scripts' names of LoRA for Flux, SD3, Anima and "
       "Lumina 2 (the same as networks.lora here: the model decides the modules).",
       "network", choices=("networks.lora", "lora_studio.lora", "networks.lora_flux", "networks.lora_sd3",
                           "networks.lora_anima", "networks.lora_lumina", "networks.lora_fa", "networks.dylora",
                           "lycoris.kohya"), advanced=True),
    _s("network_dim", INT, 4, "Network Rank (Dimension)",
       "Rank of each adapter: capacity and file size. 100000 with LyCORIS LoKr: a full-matrix LoKr.", "network",
       minimum=1, maximum=100000),
    _s("network_alpha", FLOAT, 1.0, "Network Alpha",
       "Scales the adapter by alpha/rank; 0 means alpha = rank (scale 1).", "network", minimum=0.0, maximum=1024.0),
    _s("network_args", STR_LIST, None, "Network args",
       "Extra network options as key=value strings: conv_dim=4 conv_alpha=1 adds LoCon (the 3x3 convolutions of "
       "the ResNet, down- and upsample blocks); rank_dropout, module_dropout; with networks.dylora unit=N; with "
       "lycoris.kohya also algo=..., preset=full|attn-mlp|..., dora_wd, factor (LoKr), use_tucker, use_scalar, "
       "train_norm, decompose_both, bypass_mode, constraint, rescaled, rs_lora.", "network", advanced=True),
    _s("network_weights", PATH, None, "LoRA network weights", "Start from the weights of this LoRA file.", "network"),
    _s("dim_from_weights", BOOL, False, "DIM from weights",
       "Take the rank (and the LoCon conv rank) from the LoRA network weights file.", "network"),
    _s("network_train_unet_only", BOOL, False, "Train U-Net only", "Do not train the text encoder.", "network"),
    _s("network_train_text_encoder_only", BOOL, False, "Train Text Encoder only", "Do not train the U-Net.",
       "network"),
    _s("network_dropout", FLOAT, 0.0, "Network dropout", "Dropout on the adapters' hidden features while training.",
       "network", minimum=0.0, maximum=1.0, advanced=True),
    # ---- optimizer and schedule ----
    _s("optimizer_type", STR, "AdamW", "Optimizer",
       "The list holds every optimizer sd-scripts names; type any torch.optim class or a dotted path "
       "(package.Class) for another. The 8-bit and Paged ones use bitsandbytes (their 32-bit form trains where it "
       "cannot run); Prodigy and the D-Adaptation ones (DAdaptAdam, ...) want a learning rate of about 1.0.",
       "optimizer",
       suggestions=OPTIMIZER_NAMES),
    _s("optimizer_args", STR_LIST, None, "Optimizer extra arguments",
       "Extra optimizer arguments as key=value strings, e.g. weight_decay=0.01 betas=(0.9,0.99).", "optimizer"),
    _s("learning_rate", FLOAT, 1e-4, "Learning rate", "Learning rate of every adapter unless overridden below.",
       "optimizer", minimum=0.0, maximum=10.0),
    _s("unet_lr", FLOAT, None, "Unet learning rate", "Learning rate of the U-Net adapters (empty = Learning rate).",
       "optimizer", minimum=0.0, maximum=10.0),
    _s("text_encoder_lr", FLOAT_OR_LIST, None, "Text Encoder learning rate",
       "Learning rate of the text-encoder adapters (empty = Learning rate).", "optimizer", minimum=0.0, maximum=10.0),
    _s("lr_scheduler", STR, "constant", "LR Scheduler",
       "How the learning rate changes over the run (adafactor: Adafactor's own step size, with optimizer Adafactor).",
       "optimizer",
       choices=("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial",
                "adafactor")),
    _s("lr_scheduler_type", STR, None, "LR scheduler type",
       "Any scheduler class instead of LR Scheduler: a torch.optim.lr_scheduler name (CosineAnnealingLR) or a dotted "
       "path (package.Class), with LR scheduler extra arguments.", "optimizer", advanced=True),
    _s("lr_scheduler_args", STR_LIST, None, "LR scheduler extra arguments",
       "Arguments of LR scheduler type as key=value strings, e.g. T_max=100 eta_min=1e-6.", "optimizer",
       advanced=True),
    _s("lr_warmup_steps", INT_OR_RATIO, 0, "LR warmup steps",
       "Steps of linear warm-up; a number below 1 (or 1.0) is a fraction of the total steps.", "optimizer",
       minimum=0),
    _s("lr_scheduler_num_cycles", INT, 1, "LR number of cycles", "Restarts of cosine_with_restarts.", "optimizer",
       minimum=1, maximum=1000, advanced=True),
    _s("lr_scheduler_power", FLOAT, 1.0, "LR power", "Power of the polynomial scheduler.", "optimizer", minimum=0.0,
       maximum=100.0, advanced=True),
    _s("max_grad_norm", FLOAT, 1.0, "Max grad norm", "Clip gradients to this norm (0 = no clipping).", "optimizer",
       minimum=0.0, maximum=1e6, advanced=True),
    # ---- training ----
    _s("max_train_steps", INT, 1600, "Max train steps", "Optimizer steps to train (ignored when Max train epoch is set).",
       "training", minimum=1, maximum=10_000_000),
    _s("max_train_epochs", INT, None, "Max train epoch", "Epochs to train; overrides Max train steps.", "training",
       minimum=1, maximum=100_000),
    _s("gradient_accumulation_steps", INT, 1, "Gradient accumulate steps",
       "Add up gradients of N batches before each optimizer step.", "training", minimum=1, maximum=1024, advanced=True),
    _s("mixed_precision", STR, "no", "Mixed precision",
       "Precision of the frozen model: bf16 (recommended on RTX 30xx and newer), fp16, or no (fp32).", "training",
       choices=("no", "fp16", "bf16")),
    _s("full_fp16", BOOL, False, "Full fp16 training (experimental)",
       "The LoRA weights, their gradients and the optimizer state in fp16 too (needs Mixed precision fp16): less "
       "memory, less precise.", "training", advanced=True),
    _s("full_bf16", BOOL, False, "Full bf16 training (experimental)",
       "The LoRA weights, their gradients and the optimizer state in bf16 too (needs Mixed precision bf16): less "
       "memory, less precise.", "training", advanced=True),
    _s("gradient_checkpointing", BOOL, False, "Gradient checkpointing",
       "Recompute activations in the backward pass: much less VRAM, about 20% slower.", "training", advanced=True),
    _s("fp8_base", BOOL, False, "fp8 base",
       "Store the frozen U-Net's and text encoders' Linear/Conv weights in float8 (1 byte each instead of 2), "
       "computed in the mixed precision: half their VRAM, results a little less exact. Needs Mixed precision bf16 "
       "or fp16.", "training", advanced=True),
    _s("fp8_base_unet", BOOL, False, "fp8 base U-Net only",
       "fp8 base for the U-Net only; the text encoders stay in the mixed precision. Needs Mixed precision bf16 or "
       "fp16.", "training", advanced=True),
    _s("lowram", BOOL, False, "Low RAM",
       "Build the model's weights straight on the GPU instead of in system RAM first (for machines with more VRAM "
       "than RAM, such as Colab); no effect without a GPU.", "training", advanced=True),
    _s("highvram", BOOL, False, "High VRAM",
       "sd-scripts: do not empty the CUDA cache while caching latents. LoRA Studio never empties it there, so every "
       "run already works this way; accepted for sd-scripts and Kohya_ss configs.", "training", advanced=True),
    _s("sync_every_n_steps", INT, 1, "Read the loss every N steps",
       "Bring the loss and the NaN check back to the CPU every N steps instead of every step, so the GPU never "
       "waits in between. Steps with a non-finite loss then train on zeroed gradients instead of being skipped.",
       "training", minimum=1, maximum=1000, advanced=True),
    _s("channels_last", BOOL, False, "Channels last",
       "Keep the U-Net's activations in channels-last memory layout: faster convolutions on NVIDIA tensor cores.",
       "training", advanced=True),
    _s("torch_compile", BOOL, False, "Compile the U-Net",
       "torch.compile the U-Net with its LoRA: faster steps after a slow first one (needs a C++ compiler).",
       "training", advanced=True),
    _s("dynamo_backend", STR, "inductor", "Compile backend", "torch.compile backend used with Compile the U-Net.",
       "training", advanced=True, suggestions=("inductor", "cudagraphs", "eager", "aot_eager")),
    _s("dynamo_mode", STR, "default", "Compile mode",
       "inductor's mode with Compile the U-Net: reduce-overhead replays the whole step of the U-Net as CUDA graphs "
       "(one per bucket shape; best for batch 1-4, where launching kernels costs more than computing them), "
       "max-autotune also searches for faster kernels (a long first step).", "training", advanced=True,
       choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")),
    _s("dynamo_use_fullgraph", BOOL, False, "Compile as one graph",
       "With Compile the U-Net: fail at once if the U-Net and its LoRA cannot be captured as one graph (a graph "
       "break) instead of running the rest uncompiled.", "training", advanced=True),
    _s("dynamo_use_dynamic", BOOL, False, "Compile for any shape",
       "With Compile the U-Net: compile one graph for every bucket shape from the start. Off: one graph per shape "
       "until torch decides to generalise (the first steps of each new bucket are slower).", "training",
       advanced=True),
    _s("xformers", BOOL, False, "Use xformers",
       "U-Net attention through xformers (needs the xformers package). Without it the U-Net uses PyTorch's "
       "scaled-dot-product attention (SDPA), which is as fast and needs nothing more.", "training", advanced=True),
    _s("sdpa", BOOL, False, "Use SDPA",
       "U-Net attention through PyTorch scaled-dot-product attention. It is the default already; the switch is "
       "kept for sd-scripts and Kohya_ss configs. xformers wins when both are set, as in sd-scripts.", "training",
       advanced=True),
    _s("mem_eff_attn", BOOL, False, "Memory efficient attention",
       "sd-scripts' own memory-efficient attention. PyTorch SDPA does the same job (its memory-efficient and flash "
       "kernels) and is used instead.", "training", advanced=True),
    _s("seed", INT, None, "Seed", "Random seed; the same seed and settings give the same LoRA.", "training",
       minimum=0, maximum=2**32 - 1),
    _s("noise_offset", FLOAT, 0.0, "Noise offset", "Adds offset noise so the LoRA can learn very dark or bright images "
       "(0.05-0.1 typical).", "training", minimum=0.0, maximum=1.0, advanced=True),
    _s("noise_offset_random_strength", BOOL, False, "Noise offset random strength",
       "Draw the noise offset of each step between 0 and Noise offset (as sd-scripts).", "training", advanced=True),
    _s("adaptive_noise_scale", FLOAT, None, "Adaptive noise scale",
       "Add this times the absolute mean of each latent channel to the noise offset (needs Noise offset; "
       "about 10% of it is typical; empty = off).", "training", minimum=-1.0, maximum=1.0, advanced=True),
    _s("multires_noise_iterations", INT, None, "Multires noise iterations",
       "Multi-resolution (pyramid) noise with this many levels, 6-10 typical (empty = off). Replaces Noise offset, "
       "as the Kohya_ss GUI's Multires noise type does.", "training", minimum=1, maximum=64, advanced=True),
    _s("multires_noise_discount", FLOAT, 0.3, "Multires noise discount",
       "Weight of each coarser level of multires noise (0.1-0.3 typical).", "training", minimum=0.0, maximum=1.0,
       advanced=True),
    _s("ip_noise_gamma", FLOAT, None, "IP noise gamma",
       "Input perturbation: extra noise of this strength on the model's input only, not on the target (0.1 "
       "typical; empty = off).", "training", minimum=0.0, maximum=1.0, advanced=True),
    _s("ip_noise_gamma_random_strength", BOOL, False, "IP noise gamma random strength",
       "Draw the input perturbation strength of each step between 0 and IP noise gamma.", "training",
       advanced=True),
    _s("min_timestep", INT, None, "Min timestep", "Train on timesteps from this one (empty = 0).", "training",
       minimum=0, maximum=1000, advanced=True),
    _s("max_timestep", INT, None, "Max timestep",
       "Train on timesteps below this one (empty = 1000, all of them).", "training", minimum=1, maximum=1000,
       advanced=True),
    _s("debiased_estimation_loss", BOOL, False, "Debiased Estimation loss",
       "Weight each sample's loss by 1/sqrt(SNR) (1/(SNR+1) for v-prediction), as sd-scripts does.", "training",
       advanced=True),
    _s("scale_weight_norms", FLOAT, None, "Scale weight norms",
       "Max-norm regularisation: after each step, scale down every adapter whose weight change (up x down x "
       "alpha/rank) has a norm above this (1 is typical; empty = off).", "training", minimum=0.0, maximum=100.0,
       advanced=True),
    _s("loss_type", STR, "l2", "Loss type",
       "How the prediction's error becomes the loss: l2 (squared, the usual), l1, huber or smooth_l1 (squared near "
       "0, linear beyond Huber C: less pulled by outliers).", "training", choices=("l2", "l1", "huber", "smooth_l1"),
       advanced=True),
    _s("huber_schedule", STR, "snr", "Huber schedule",
       "Huber C per timestep: snr (from the noise level), exponential (from 1 down to Huber C) or constant.",
       "training", choices=("constant", "exponential", "snr"), advanced=True),
    _s("huber_c", FLOAT, 0.1, "Huber C", "The Huber loss threshold (huber and smooth_l1).", "training",
       minimum=0.0001, maximum=10.0, advanced=True),
    _s("huber_scale", FLOAT, 1.0, "Huber scale", "Multiplies Huber C (constant and exponential schedules).",
       "training", minimum=0.0001, maximum=100.0, advanced=True),
    _s("scale_v_pred_loss_like_noise_pred", BOOL, False, "Scale v-prediction loss",
       "v-prediction: scale the loss by SNR / (SNR + 1) so it weighs timesteps like an epsilon model's loss.",
       "training", advanced=True),
    _s("v_pred_like_loss", FLOAT, None, "V Pred like loss",
       "Add this share of a v-prediction-like loss (the loss divided by SNR / (SNR + 1)); empty = off.", "training",
       minimum=0.0, maximum=10.0, advanced=True),
    _s("zero_terminal_snr", BOOL, False, "Zero terminal SNR",
       "Rescale the noise schedule so the last timestep is pure noise (for v-prediction models).", "training",
       advanced=True),
    _s("masked_loss", BOOL, False, "Masked loss",
       "Train only where the mask images (Mask folder, red channel: white = 1, black = 0) are white.", "training",
       advanced=True),
    _s("min_snr_gamma", FLOAT, None, "Min SNR gamma", "Min-SNR loss weighting (5 is the paper's value; empty = off).",
       "training", minimum=0.0, maximum=100.0, advanced=True),
    _s("num_processes", INT, 1, "Number of processes",
       "Processes (GPUs) the GUI launches with accelerate; the engine itself trains on however many it is given.",
       "training", minimum=1, maximum=64, advanced=True),
    # ---- saving ----
    _s("save_model_as", STR, "safetensors", "Save trained model as", "File format of the LoRA.", "saving",
       choices=("safetensors",)),
    _s("save_precision", STR, "fp16", "Save precision", "Precision of the saved LoRA weights.", "saving",
       choices=("fp16", "bf16", "float")),
    _s("save_every_n_epochs", INT, None, "Save every N epochs", "Also save <name>-000001.safetensors every N epochs.",
       "saving", minimum=1, maximum=100_000),
    _s("save_n_epoch_ratio", INT, None, "Save N epoch ratio",
       "Save about this many epoch files over the run: every (epochs / N) epochs, instead of Save every N epochs.",
       "saving", minimum=1, maximum=1000, advanced=True),
    _s("output_config", BOOL, False, "Output config",
       "lora-studio train --config NEW.toml --output_config [--setting value ...] writes those settings to NEW.toml "
       "(which must not exist yet) and stops, as sd-scripts does.", "saving", advanced=True),
    _s("metadata_title", STR, None, "Metadata title",
       "The LoRA's title in its model-spec metadata (default: the file's name).", "saving", advanced=True),
    _s("metadata_author", STR, None, "Metadata author", "Who made the LoRA (model-spec metadata).", "saving",
       advanced=True),
    _s("metadata_description", STR, None, "Metadata description",
       "What the LoRA is for (model-spec metadata; default: the Training comment).", "saving", advanced=True),
    _s("metadata_license", STR, None, "Metadata license", "The LoRA's license (model-spec metadata).", "saving",
       advanced=True),
    _s("metadata_tags", STR, None, "Metadata tags", "Comma-separated tags (model-spec metadata).", "saving",
       advanced=True),
    _s("save_every_n_steps", INT, None, "Save every N steps", "Also save <name>-step00000500.safetensors every N steps.",
       "saving", minimum=1, maximum=10_000_000, advanced=True),
    _s("save_state", BOOL, False, "Save training state",
       "Beside each saved LoRA, also save the full training state (<name>-...-state folder) so a crashed or stopped "
       "run can resume exactly where it was.", "saving"),
    _s("save_state_on_train_end", BOOL, False, "Save training state at end of training",
       "Save the full state (<name>-state) once, when the run ends.", "saving", advanced=True),
    _s("resume", PATH, None, "Resume from saved training state",
       "A <name>-...-state folder to continue from, or \"latest\" for the newest state of this output name.",
       "saving"),
    _s("nan_policy", STR, "stop", "When the loss diverges",
       "stop: end the run with advice and keep the last good file; rollback: go back to the last good weights "
       "with half the learning rate and continue (up to 3 times).", "training", choices=("stop", "rollback"),
       advanced=True),
    _s("save_last_n_steps", INT, None, "Save last N steps",
       "Keep only the step files (and states) of the last N steps: older ones are removed after each step save.",
       "saving", minimum=1, maximum=10_000_000, advanced=True),
    _s("save_last_n_steps_state", INT, None, "Save last N steps state",
       "Keep the step states of the last N steps (default: Save last N steps).", "saving", minimum=1,
       maximum=10_000_000, advanced=True),
    _s("save_last_n_epochs_state", INT, None, "Save last N epochs state",
       "Keep the states of the last N saved epochs (default: Save last N epochs).", "saving", minimum=1,
       maximum=100_000, advanced=True),
    _s("validation_split", FLOAT, 0.0, "Validation split",
       "Hold out this share of each folder's images (0.1 = 10%) and measure the loss on them as training goes: "
       "the same noise and timesteps each time, so the numbers compare.", "saving", minimum=0.0, maximum=0.9),
    _s("validation_seed", INT, None, "Validation seed", "Which images are held out (default: the seed).", "saving",
       advanced=True),
    _s("validate_every_n_epochs", INT, None, "Validate every N epochs",
       "Measure the validation loss every N epochs (default: every epoch when images are held out).", "saving",
       minimum=1, maximum=100_000, advanced=True),
    _s("validate_every_n_steps", INT, None, "Validate every N steps", "Also measure it every N steps.", "saving",
       minimum=1, maximum=10_000_000, advanced=True),
    _s("max_validation_steps", INT, None, "Max validation steps",
       "Measure on at most this many validation batches (default: all).", "saving", minimum=1, maximum=1_000_000,
       advanced=True),
    _s("save_best", BOOL, False, "Keep the best",
       "Keep <name>-best.safetensors: the weights with the lowest validation loss so far (needs a Validation "
       "split).", "saving"),
    _s("early_stop_patience", INT, None, "Early stop patience",
       "End the run (saving, as Stop does) after this many validations without an improvement of at least Early "
       "stop min delta; empty = never.", "saving", minimum=1, maximum=100_000, advanced=True),
    _s("early_stop_min_delta", FLOAT, 0.0, "Early stop min delta",
       "How much lower the validation loss must be to count as an improvement.", "saving", minimum=0.0,
       maximum=1e6, advanced=True),
    _s("save_last_n_epochs", INT, None, "Save last N epochs", "Keep only the last N intermediate epoch files.",
       "saving", minimum=1, maximum=100_000, advanced=True),
    # ---- Hugging Face uploads ----
    _s("huggingface_repo_id", STR, None, "Huggingface repo id",
       "Upload each saved LoRA file to this Hub repository (owner/name; created when missing), as sd-scripts does. "
       "A failed upload is said once in the log; the run and its local files go on.", "huggingface",
       advanced=True),
    _s("huggingface_token", STR, None, "Huggingface token",
       "A Hub token with write access (default: HF_TOKEN, or the login of hf auth login). Never written to the "
       "saved config, the LoRA file or the log.", "huggingface", advanced=True),
    _s("huggingface_repo_type", STR, None, "Huggingface repo type",
       "Kind of repository to upload to (empty = model).", "huggingface", advanced=True,
       suggestions=("model", "dataset")),
    _s("huggingface_repo_visibility", STR, None, "Huggingface repo visibility",
       "public makes a new repository public; anything else (or empty) makes it private, as sd-scripts does. An "
       "existing repository keeps its visibility.", "huggingface", advanced=True, suggestions=("private", "public")),
    _s("huggingface_path_in_repo", STR, None, "Huggingface path in repo",
       "Folder in the repository the files go to (empty = its top level).", "huggingface", advanced=True),
    _s("save_state_to_huggingface", BOOL, False, "Save state to huggingface",
       "Also upload each saved training state folder (needs Save training state and a repo id).", "huggingface",
       advanced=True),
    _s("resume_from_huggingface", BOOL, False, "Resume from huggingface",
       "Read Resume from saved training state as a state on the Hub: owner/name/<state folder>[:revision[:type]], "
       "downloaded before training.", "huggingface", advanced=True),
    _s("async_upload", BOOL, False, "Async upload",
       "Upload intermediate files and states in the background while training goes on (the final file is "
       "uploaded before the run ends; the run waits for the rest).", "huggingface", advanced=True),
    # ---- samples ----
    _s("sample_prompts", PATH, None, "Sample prompts file",
       "Text file with one prompt a line; options --n (negative) --w --h --d (seed) --s (steps) --l (CFG).", "samples"),
    _s("sample_every_n_epochs", INT, None, "Sample every n epochs", "Make sample images every N epochs.", "samples",
       minimum=1, maximum=100_000),
    _s("sample_every_n_steps", INT, None, "Sample every n steps", "Make sample images every N steps.", "samples",
       minimum=1, maximum=10_000_000),
    _s("sample_sampler", STR, "ddim", "Sample sampler", "Sampler for sample images.", "samples",
       choices=("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
                "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")),
    _s("sample_at_first", BOOL, False, "Sample at first", "Also make sample images before training starts.",
       "samples"),
)

FLUX = ("flux-dev", "flux-schnell", "chroma")  # models.flux
SD3 = ("sd3-medium", "sd3.5-medium", "sd3.5-large")  # models.sd3
ANIMA = ("anima",)  # models.anima
LUMINA = ("lumina2",)  # models.lumina
DIT = FLUX + SD3 + ANIMA + LUMINA  # the flow-matching transformers
SIGMA_SAMPLED = FLUX + ANIMA + LUMINA  # sd-scripts' Flux sigma sampler (SD3 has its own timestep rule)
SD = ("sd1", "sd2", "sdxl")


def _dit(name, kind, default, label, help, families=DIT, **kw) -> Setting:
    return Setting(name, kind, default, label, help, "flux", families=families, **kw)


def _family(group: str, families: tuple[str, ...]):
    def make(name, kind, default, label, help, **kw) -> Setting:
        return Setting(name, kind, default, label, help, group, families=families, **kw)
    return make


_flux, _sd3, _anima, _lumina = (_family("flux", FLUX), _family("sd3", SD3), _family("anima", ANIMA),
                                _family("lumina", LUMINA))

# The flow-matching transformers: Flux.1 and Chroma, SD3 / SD3.5, Anima, Lumina 2 (sd-scripts' names:
# flux_train_network.py, sd3_train_network.py, anima_train_network.py, lumina_train_network.py). Empty = the family's
# recommended value.
FLUX_SETTINGS: tuple[Setting, ...] = (
    _dit("ae", PATH, None, "AE (autoencoder)", "The Flux autoencoder file (ae.safetensors from FLUX.1-dev / schnell; "
         "Lumina 2 uses the same one).", families=FLUX + LUMINA),
    _dit("clip_l", PATH, None, "CLIP-L", "The CLIP-L text encoder file (clip_l.safetensors; not used by Chroma; for "
         "SD3 only when the checkpoint has none).", families=FLUX + SD3),
    _sd3("clip_g", PATH, None, "CLIP-G", "SD3's CLIP-G text encoder file (clip_g.safetensors) when the checkpoint has "
         "none."),
    _dit("t5xxl", PATH, None, "T5-XXL", "The T5-XXL text encoder file (t5xxl_fp16.safetensors, or "
         "t5xxl_fp8_e4m3fn.safetensors with fp8 base; for SD3 optional, when the checkpoint has none).",
         families=FLUX + SD3),
    _anima("qwen3", PATH, None, "Qwen3", "Anima's text encoder: qwen_3_06b_base.safetensors, or a Qwen3-0.6B folder."),
    _anima("llm_adapter_path", PATH, None, "LLM adapter",
           "A separate LLM adapter file (llm_adapter.*); empty: the one inside the Anima checkpoint.", advanced=True),
    _anima("t5_tokenizer_path", PATH, None, "T5 tokenizer folder",
           "Anima: a folder with the T5 tokenizer its LLM adapter's ids come from (spiece.model or tokenizer.json); "
           "empty: google/t5-v1_1-xxl's, found as Tokenizer cache folder says.", advanced=True),
    _lumina("gemma2", PATH, None, "Gemma2", "Lumina 2's text encoder: gemma_2_2b_fp16.safetensors, or a Gemma2-2B "
            "folder."),
    _flux("model_type", STR, None, "Model type", "flux or chroma, as sd-scripts; empty: told from the weights.",
          choices=(None, "flux", "chroma")),
    _dit("tokenizer_cache_dir", PATH, None, "Tokenizer cache folder",
         "Where the tokenizers are kept (sd-scripts' layout, a folder per Hugging Face id with / as _: "
         "google_t5-v1_1-xxl/, openai_clip-vit-large-patch14/ ...); else the Hugging Face cache; else downloaded "
         "once.", advanced=True),
    _dit("timestep_sampling", STR, None, "Timestep sampling",
         "How each image's noise level (sigma) is drawn: sigma (the scheduler's table), uniform, sigmoid "
         "(logit-normal), shift (sigmoid, shifted by Discrete flow shift), flux_shift (shifted by the image's size) "
         "or nextdit_shift (Lumina 2: uniform, shifted by the image's size). Empty: shift for Flux and Lumina 2, "
         "sigmoid for Chroma and Anima.",
         choices=(None, "sigma", "uniform", "sigmoid", "shift", "flux_shift", "nextdit_shift"),
         families=SIGMA_SAMPLED),
    _dit("sigmoid_scale", FLOAT, 1.0, "Sigmoid scale", "Scale of the normal draw of sigmoid / shift / flux_shift.",
         minimum=0.01, maximum=100.0, advanced=True, families=SIGMA_SAMPLED),
    _dit("discrete_flow_shift", FLOAT, None, "Discrete flow shift",
         "The shift of shift sampling (and of the sigma table). Empty: 3.1582 for Flux (sd-scripts' documentation), "
         "1.0 for Anima, 6.0 for Lumina 2.", minimum=0.01, maximum=100.0, families=SIGMA_SAMPLED),
    _sd3("training_shift", FLOAT, 1.0, "Training shift",
         "SD3: the shift of the timestep draw (u -> u s / (1 + (s - 1) u)); 1.0 leaves it as drawn.", minimum=0.01,
         maximum=100.0),
    _dit("model_prediction_type", STR, "raw", "Model prediction type",
         "raw (recommended: the velocity the model predicts), additive, or sigma_scaled (sd-scripts' Flux default).",
         choices=("raw", "additive", "sigma_scaled"), families=FLUX + LUMINA),
    _dit("weighting_scheme", STR, "uniform", "Weighting scheme",
         "Density of the timestep draw (SD3; Flux's sigma sampling) and loss weighting: uniform, none, "
         "logit_normal, mode, cosmap, sigma_sqrt.", choices=("uniform", "none", "logit_normal", "mode", "cosmap",
                                                            "sigma_sqrt"), advanced=True),
    _dit("logit_mean", FLOAT, 0.0, "Logit mean", "Mean of logit_normal weighting.", advanced=True),
    _dit("logit_std", FLOAT, 1.0, "Logit std", "Standard deviation of logit_normal weighting.", minimum=0.01,
         advanced=True),
    _dit("mode_scale", FLOAT, 1.29, "Mode scale", "Scale of mode weighting.", advanced=True),
    _flux("guidance_scale", FLOAT, None, "Guidance scale",
          "The guidance value the transformer is given in training. Empty: 1.0 for Flux dev (sd-scripts' "
          "documentation: the distilled guidance must be 1.0 for LoRA), 0 for Chroma (required).",
          minimum=0.0, maximum=100.0),
    _dit("t5xxl_max_token_length", INT, None, "T5 max token length",
         "Caption length for T5. Empty: 512 for Flux dev and Chroma, 256 for schnell and SD3.", minimum=16,
         maximum=512, advanced=True, families=FLUX + SD3),
    _dit("apply_t5_attn_mask", BOOL, None, "Apply T5 attention mask",
         "Mask T5's padding in T5's attention (Flux: also in the transformer's). Empty: on for Chroma (required), "
         "off otherwise.", advanced=True, families=FLUX + SD3),
    _sd3("apply_lg_attn_mask", BOOL, None, "Apply CLIP-L/G attention mask",
         "SD3: mask CLIP-L's and CLIP-G's padding in their attention (sd-scripts' apply_lg_attn_mask).",
         advanced=True),
    _sd3("clip_l_dropout_rate", FLOAT, 0.0, "CLIP-L dropout rate",
         "SD3: how often a caption's CLIP-L output is dropped (zeroed) in training.", minimum=0.0, maximum=1.0,
         advanced=True),
    _sd3("clip_g_dropout_rate", FLOAT, 0.0, "CLIP-G dropout rate",
         "SD3: how often a caption's CLIP-G output is dropped (zeroed) in training.", minimum=0.0, maximum=1.0,
         advanced=True),
    _sd3("t5_dropout_rate", FLOAT, 0.0, "T5 dropout rate",
         "SD3: how often a caption's T5 output is dropped (zeroed) in training.", minimum=0.0, maximum=1.0,
         advanced=True),
    _sd3("pos_emb_random_crop_rate", FLOAT, 0.0, "Position embedding random crop rate",
         "SD3.5 medium: how often the position embedding is cropped at a random place instead of the centre.",
         minimum=0.0, maximum=1.0, advanced=True),
    _sd3("enable_scaled_pos_embed", BOOL, False, "Scaled position embedding",
         "SD3.5 medium: scale the position embedding to each bucket's size (for multi-resolution training).",
         advanced=True),
    _anima("qwen3_max_token_length", INT, None, "Qwen3 max token length", "Caption length for Qwen3 (empty: 512).",
           minimum=16, maximum=4096, advanced=True),
    _anima("t5_max_token_length", INT, None, "T5 max token length (adapter)",
           "Caption length of the T5 token ids Anima's LLM adapter reads (empty: 512).", minimum=16, maximum=4096,
           advanced=True),
    _lumina("gemma2_max_token_length", INT, None, "Gemma2 max token length", "Caption length for Gemma2 (empty: 256).",
            minimum=16, maximum=4096, advanced=True),
    _lumina("system_prompt", STR, None, "System prompt",
            "Lumina 2: put before each caption as \"<system prompt> <Prompt Start> <caption>\". Lumina 2's "
            "recommendation: \"You are an assistant designed to generate high-quality images based on user "
            "prompts.\""),
    _dit("text_encoder_batch_size", INT, None, "Text encoder batch size",
         "Captions encoded at once when caching text-encoder outputs (empty: 8).", minimum=1, maximum=1024,
         advanced=True),
    _anima("vae_chunk_size", INT, None, "VAE chunk size",
           "Anima: encode and decode the Qwen-Image VAE in chunks of this many rows (less memory).", minimum=1,
           maximum=4096, advanced=True),
    _anima("vae_disable_cache", BOOL, False, "VAE disable cache",
           "Anima: do not keep the Qwen-Image VAE's causal cache between chunks (less memory, slower).",
           advanced=True),
    _dit("blocks_to_swap", INT, None, "Blocks to swap",
         "Keep this many of the transformer's blocks on the CPU and bring each in when it runs: less VRAM, slower "
         "(sd-scripts, Flux: about 18 for 16 GB, 35 for 12 GB cards).", minimum=0, maximum=55),
    _dit("cpu_offload_checkpointing", BOOL, False, "CPU offload checkpointing",
         "Keep the activations the checkpoints hold on the CPU (with checkpointing on; not with blocks to swap).",
         advanced=True),
)
# Settings of the Stable Diffusion families only: DDPM noise and SNR options, CLIP prompt options, SD2 / v-prediction
# switches. The GUI hides them for another family; Check settings and the run name them when set for one.
SD_ONLY = frozenset({"v2", "v_parameterization", "clip_skip", "max_token_length", "vae", "zero_terminal_snr",
                     "min_snr_gamma", "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss",
                     "debiased_estimation_loss", "noise_offset", "noise_offset_random_strength", "adaptive_noise_scale",
                     "multires_noise_iterations", "multires_noise_discount", "weighted_captions"})
SETTINGS = tuple(replace(s, families=SD) if s.name in SD_ONLY else s for s in SETTINGS) + FLUX_SETTINGS
# SD3 and Anima name their separate VAE file with sd-scripts' vae setting
SETTINGS = tuple(replace(s, families=SD + SD3 + ANIMA) if s.name == "vae" else s for s in SETTINGS)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

# Parameters > Advanced in sections, as sd-scripts' documentation and the Kohya_ss GUI group them: section -> its
# settings in the order the GUI shows them (a switch beside the settings it goes with). Every advanced setting is in
# exactly one section (tested): a new one goes where a user would look for it.
ADVANCED_SECTIONS: dict[str, tuple[str, ...]] = {
    "Network": ("network_module", "network_args", "network_dropout", "scale_weight_norms"),
    "Optimizer and schedule": ("lr_scheduler_type", "lr_scheduler_args", "lr_scheduler_num_cycles",
                               "lr_scheduler_power", "max_grad_norm"),
    "Memory and speed": ("gradient_checkpointing", "gradient_accumulation_steps", "full_fp16", "full_bf16",
                         "fp8_base", "fp8_base_unet", "lowram", "highvram", "xformers", "sdpa", "mem_eff_attn",
                         "channels_last", "torch_compile", "dynamo_backend", "dynamo_mode", "dynamo_use_fullgraph",
                         "dynamo_use_dynamic", "sync_every_n_steps"),
    "Caching and data loading": ("vae_batch_size", "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk",
                                 "max_data_loader_n_workers", "persistent_data_loader_workers"),
    "Captions": ("shuffle_caption", "keep_tokens", "keep_tokens_separator", "caption_separator",
                 "secondary_separator", "caption_prefix", "caption_suffix", "enable_wildcard", "weighted_captions",
                 "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
                 "token_warmup_min", "token_warmup_step"),
    "Images and augmentation": ("bucket_reso_steps", "bucket_no_upscale", "flip_aug", "color_aug", "random_crop",
                                "in_json", "dataset_repeats"),
    "Noise and loss": ("noise_offset", "noise_offset_random_strength", "adaptive_noise_scale",
                       "multires_noise_iterations", "multires_noise_discount", "ip_noise_gamma",
                       "ip_noise_gamma_random_strength", "min_timestep", "max_timestep", "zero_terminal_snr",
                       "loss_type", "huber_schedule", "huber_c", "huber_scale", "min_snr_gamma",
                       "debiased_estimation_loss", "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss",
                       "prior_loss_weight", "masked_loss", "alpha_mask", "conditioning_data_dir"),
    "Model and text encoder": ("clip_skip", "max_token_length", "no_half_vae", "allow_pickle"),
    "Saving and validation": ("save_every_n_steps", "save_n_epoch_ratio", "save_last_n_epochs", "save_last_n_steps",
                              "save_state_on_train_end", "save_last_n_epochs_state", "save_last_n_steps_state",
                              "nan_policy", "output_config", "validation_seed", "validate_every_n_epochs",
                              "validate_every_n_steps", "max_validation_steps", "early_stop_patience",
                              "early_stop_min_delta"),
    "Logging": ("log_with", "log_prefix", "log_tracker_name", "log_tracker_config", "wandb_run_name",
                "wandb_api_key", "log_config"),
    "Metadata": ("metadata_title", "metadata_author", "metadata_description", "metadata_license", "metadata_tags"),
    "Hugging Face": ("huggingface_repo_id", "huggingface_repo_type", "huggingface_repo_visibility",
                     "huggingface_path_in_repo", "huggingface_token", "save_state_to_huggingface",
                     "resume_from_huggingface", "async_upload"),
    "Multi-GPU (accelerate)": ("num_processes",),
    "Flow-matching transformers": ("tokenizer_cache_dir", "sigmoid_scale", "weighting_scheme", "logit_mean",
                                   "logit_std", "mode_scale", "t5xxl_max_token_length", "apply_t5_attn_mask",
                                   "text_encoder_batch_size", "cpu_offload_checkpointing"),
    "SD3": ("apply_lg_attn_mask", "clip_l_dropout_rate", "clip_g_dropout_rate", "t5_dropout_rate",
            "pos_emb_random_crop_rate", "enable_scaled_pos_embed"),
    "Anima": ("llm_adapter_path", "t5_tokenizer_path", "qwen3_max_token_length", "t5_max_token_length", "vae_chunk_size",
              "vae_disable_cache"),
    "Lumina 2": ("gemma2_max_token_length",),
}
SECTION_OF: dict[str, str] = {name: section for section, names in ADVANCED_SECTIONS.items() for name in names}

# sd-scripts settings that LoRA Studio does not implement (yet). At their sd-scripts default they change nothing and
# are accepted with a notice; any other value is an error, never silently ignored.
UNSUPPORTED: dict[str, Any] = {
    "base_weights": None,
    "base_weights_multiplier": None,
    "resize_interpolation": None, "face_crop_aug_range": None, "skip_cache_check": False,
    "debug_dataset": False, "no_metadata": False,
    "fused_backward_pass": False, "use_8bit_adam": False, "use_lion_optimizer": False,
    "lr_decay_steps": 0, "lr_scheduler_timescale": None, "lr_scheduler_min_lr_ratio": None,
    "ddp_timeout": None, "ddp_gradient_as_bucket_view": False,
    "ddp_static_graph": False,
    "initial_epoch": None,
    "initial_step": None, "skip_until_initial_step": False, "sample_every_n_epochs_ratio": None,
    "no_token_padding": False, "console_log_level": None, "console_log_file": None,
    "console_log_simple": False, "deepspeed": False, "zero_stage": 2,
    "loraplus_lr_ratio": None, "loraplus_unet_lr_ratio": None, "loraplus_text_encoder_lr_ratio": None,
    "disable_mmap_load_safetensors": False, "dataset_class": None,
    "show_timesteps": None, "show_timesteps_resolution": None,
}
# sd-scripts' deprecated options and what they turn into (sd-scripts does the same, with a warning)
DEPRECATED: dict[str, tuple[str, Any]] = {"split_mode": ("blocks_to_swap", 18)}

# Keys the Kohya_ss GUI writes into its TOML that no sd-scripts script reads; they carry no meaning.
# (mem_eff_save: read by sd-scripts' Flux fine-tuning script only; the LoRA script ignores it. The two per-kind swap
# counts: an old sd-scripts option its LoRA script no longer reads.)
IGNORED_GUI_KEYS = frozenset({"epoch", "noise_offset_type", "train_inpainting", "lowvram", "mem_eff_save",
                              "single_blocks_to_swap", "double_blocks_to_swap"})
# sd-scripts reads these only inside network_args (Kohya_ss v25.0-25.2 wrote them as top-level keys, where they did
# nothing): a top-level value is refused with the fix, a top-level default is accepted.
NETWORK_ARGS_ONLY = frozenset({"loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"})
# Settings never written to a saved config, the metadata or a tracker's record of the run.
SECRET_SETTINGS = frozenset({"wandb_api_key", "huggingface_token"})
