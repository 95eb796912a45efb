"""Fine-tune a model (Flax, optax AdamW) on a text file; log loss and tokens/s; save a Hugging Face folder.

The text is tokenized once with the model folder's tokenizer (or --tokenizer) and read as random
windows of --seq-len tokens; with --packed its documents (separated by blank lines, or the lines of
a .jsonl file) are packed several to a row instead, each with EOS, never attending to each other.
On several devices the run is sharded over a (data, fsdp, tensor) mesh; on several hosts, start
every host with the same command and --distributed. With --lora only a LoRA adapter on the named
layers trains (over an int8/int4 base with --quantization: QLoRA) and --output receives the adapter
as a PEFT folder, or with --merge the merged model as a Hugging Face folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import jax
from jax.experimental import multihost_utils
from tqdm import tqdm

from llama_flax import FlaxLlamaForCausalLM, parallel
from llama_flax.training import TrainConfig, Trainer, token_batches
from llama_shared.checkpoints import resolve_model_dir
from llama_shared.errors import ConfigError
from llama_shared.lora import LoraConfig
from llama_shared.tokenizers import TOKENIZER_FILES, AutoTokenizer
from llama_twin.distributed import parse_mesh

REMAT_CHOICES = ("none", "full", "dots_saveable")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model folder (config.json + safetensors) or hub repo id")
    parser.add_argument("text", metavar="TEXT_FILE", help="UTF-8 text to train on")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="where the trained model (and its tokenizer) is written; must not exist or be empty")
    parser.add_argument("--steps", type=int, default=100,
                        help="train until this optimizer step, counting resumed ones; the schedule's length "
                             "(default: 100)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step (default: 8)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default: 256)")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="peak AdamW learning rate (default: 3e-4)")
    parser.add_argument("--warmup-steps", type=int, help="linear warmup steps (default: a tenth of --steps)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default: 0.1)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (default: 1.0)")
    parser.add_argument("--accumulation-steps", type=int, default=1,
                        help="micro-batches per step; --batch-size must divide by it (default: 1)")
    parser.add_argument("--remat", default="none", choices=REMAT_CHOICES,
                        help="recompute decoder layers in the backward pass (default: none)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="compute dtype (default: float32)")
    parser.add_argument("--master-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="dtype of the params and optimizer state (default: float32)")
    parser.add_argument("--mesh", default="1,-1,1", metavar="DATA,FSDP,TENSOR",
                        help="device mesh sizes, one may be -1 for the rest (default: 1,-1,1: FSDP over all devices)")
    parser.add_argument("--packed", action="store_true",
                        help="pack the file's documents into rows (segment ids) instead of random windows")
    parser.add_argument("--scan-layers", action="store_true",
                        help="run the decoder layers as one nn.scan (compile time flat in depth)")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: MODEL)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the window sampling (default: 0)")
    parser.add_argument("--save-state", metavar="DIR", help="also write the Orbax train state here at the end")
    parser.add_argument("--resume", metavar="DIR", help="continue from an Orbax train state written by --save-state")
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-host job (jax.distributed, from JAX_COORDINATOR_ADDRESS, "
                             "JAX_NUM_PROCESSES, JAX_PROCESS_ID or the cluster's own environment)")
    parser.add_argument("--log-every", type=int, default=10, help="print a log line every N steps (default: 10)")
    lora = parser.add_argument_group("LoRA (only an adapter trains; the base stays frozen)")
    lora.add_argument("--lora", metavar="MODULES",
                      help="train a LoRA adapter on these linear layers, comma-separated (q_proj,k_proj,v_proj,"
                           "o_proj,gate_proj,up_proj,down_proj,lm_head) or all-linear; --output gets a PEFT folder")
    lora.add_argument("--lora-rank", type=int, default=8, help="adapter rank r (default: 8)")
    lora.add_argument("--lora-alpha", type=float, default=16.0, help="lora_alpha; the update is scaled by "
                      "alpha / r (default: 16)")
    lora.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapter's input (default: 0)")
    lora.add_argument("--rslora", action="store_true", help="scale by alpha / sqrt(r) (rank-stabilised LoRA)")
    lora.add_argument("--quantization", choices=("int8", "int4"),
                      help="quantize the frozen base as it loads (QLoRA; the layers run unrolled)")
    lora.add_argument("--group-size", type=int, help="int4 group size: 32, 64 or 128 (default: 128)")
    lora.add_argument("--merge", action="store_true",
                      help="write the base with the adapter merged into it (a Hugging Face folder) instead of "
                           "the adapter; over a quantized base the float base is read again and merged")


def run(args: argparse.Namespace) -> int:
    if args.distributed:
        parallel.initialize_distributed()
    if os.path.exists(args.output) and (not os.path.isdir(args.output) or os.listdir(args.output)):
        raise SystemExit(f"--output {args.output} exists and is not empty; choose a new folder")
    if args.save_state and os.path.exists(args.save_state):
        raise SystemExit(f"--save-state {args.save_state} already exists; choose a new folder")
    adapter = lora_config(args)
    model_dir = str(resolve_model_dir(args.model))
    tokenizer_dir = args.tokenizer or model_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with open(args.text, encoding="utf-8") as f:
        tokens = tokenizer.encode(f.read())

    mesh = parallel.make_mesh(*parse_mesh(args.mesh))
    if args.quantization:
        model = FlaxLlamaForCausalLM.from_pretrained(model_dir, quantization=args.quantization,
                                                     group_size=args.group_size)
    else:
        model = parallel.from_pretrained_sharded(FlaxLlamaForCausalLM, model_dir, mesh, scan_layers=args.scan_layers)
    if adapter is not None:
        try:
            model.add_adapter(adapter, seed=args.seed)
        except ConfigError as e:
            raise SystemExit(f"--lora: {e}") from None
    if max(tokens, default=0) >= model.config.vocab_size:
        raise SystemExit(f"the tokenizer in {tokenizer_dir} yields token id {max(tokens)}, outside the model's "
                         f"vocabulary of {model.config.vocab_size}")
    config = TrainConfig(learning_rate=args.learning_rate, total_steps=args.steps,
                         warmup_steps=args.warmup_steps if args.warmup_steps is not None else args.steps // 10,
                         weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
                         accumulation_steps=args.accumulation_steps, remat_policy=args.remat,
                         compute_dtype=args.dtype, master_dtype=args.master_dtype, seed=args.seed)
    trainer = Trainer(model, config, mesh)
    state = trainer.restore(args.resume) if args.resume else trainer.init_state()
    steps = args.steps - int(state.step)
    if steps <= 0:
        raise SystemExit(f"the train state in {args.resume} is at step {int(state.step)}, "
                         f"not before --steps {args.steps}")
    main_process = jax.process_index() == 0
    print(f"{len(tokens)} tokens from {args.text}; mesh {dict(mesh.shape)}; {steps} steps of "
          f"{args.batch_size} x {args.seq_len} tokens from step {int(state.step)}")

    bar = tqdm(total=steps, unit="step", disable=not main_process)

    def log(step: int, metrics: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_second']:.0f}")
        if step % args.log_every == 0 and main_process:
            bar.write(f"step {step} loss {metrics['loss']:.4f} grad_norm {metrics['grad_norm']:.3f} "
                      f"lr {metrics['learning_rate']:.2e} tokens/s {metrics['tokens_per_second']:.0f}")

    if args.packed:
        from llama_twin.data import packed_batches

        # every host passes the same global batch (the mesh runner splits it), so one shard for all
        batches = packed_batches([args.text], tokenizer, args.seq_len, args.batch_size, args.seed + int(state.step),
                                 shard_index=0, shard_count=1)
    else:
        batches = token_batches(tokens, args.batch_size, args.seq_len, args.seed + int(state.step))
    state, losses = trainer.fit(state, batches, steps, log)
    bar.close()

    if args.save_state:
        trainer.save(args.save_state, state)
    model.params = multihost_utils.process_allgather(trainer.model_params(state), tiled=True)
    if main_process:
        save_result(model, args, model_dir)
        for name in TOKENIZER_FILES:
            source = os.path.join(tokenizer_dir, name)
            if os.path.isfile(source):
                os.makedirs(os.path.dirname(os.path.join(args.output, name)), exist_ok=True)
                shutil.copyfile(source, os.path.join(args.output, name))
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; wrote {args.output}")
    return 0


def lora_config(args: argparse.Namespace) -> LoraConfig | None:
    """The adapter the options describe (None without --lora); bad settings end the run before loading."""
    if args.lora is None:
        for option, given in (("--quantization", args.quantization), ("--merge", args.merge)):
            if given:
                raise SystemExit(f"{option} applies to LoRA training: add --lora MODULES")
        return None
    if args.quantization and args.scan_layers:
        raise SystemExit("--quantization and --scan-layers cannot be combined: quantized models run unrolled")
    targets = args.lora if args.lora == "all-linear" else tuple(t.strip() for t in args.lora.split(",") if t.strip())
    try:
        return LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                          target_modules=targets, use_rslora=args.rslora, base_model_name_or_path=args.model)
    except ConfigError as e:
        raise SystemExit(f"--lora: {e}") from None


def save_result(model: FlaxLlamaForCausalLM, args: argparse.Namespace, model_dir: str) -> None:
    """Write the trained model, the adapter (--lora) or the merged model (--lora --merge) into --output."""
    if model.adapter_config is None:
        model.save_pretrained(args.output)
    elif not args.merge:
        model.save_adapter(args.output)
    elif not args.quantization:
        model.merge_and_unload().save_pretrained(args.output)
    else:
        with tempfile.TemporaryDirectory() as adapter_dir:
            model.save_adapter(os.path.join(adapter_dir, "adapter"))
            float_model = FlaxLlamaForCausalLM.from_pretrained(model_dir, adapter=os.path.join(adapter_dir, "adapter"))
        float_model.merge_and_unload().save_pretrained(args.output)
