"""
What bench.py times: one variant (a model, its optimizer and a fixed batch, stepped as train.py steps) in bench.py's
process or in one of its own, and one model's generation with and without the KV cache. The measurement itself, the
round-robin and the ratios, is bench.py's.
"""
import time
from contextlib import nullcontext

import torch

from lab.analysis import mean_step_seconds, train_step
from model import GPT, GPTConfig
from training.peak_flops import process_cpu_seconds


class Variant:
    """One row of the table: a model (compiled or not) with train.py's AdamW and a fixed random batch."""

    def __init__(self, cfg, activation, mode, moe, order=None):
        """order: the PolyCom order r of this variant, named in its row (None: cfg's poly_order, unnamed)."""
        self.activation, self.mode, self.moe, self.order = activation, mode, moe, order
        self.key, self.spec = (activation, order, mode, moe), (activation, mode, moe, order)
        self.name = Variant.name_of(activation, mode, moe, order)
        self.device = cfg['device']
        config = GPTConfig(block_size=cfg['block_size'], vocab_size=cfg['vocab_size'], n_layer=cfg['n_layer'],
                           n_head=cfg['n_head'], n_embd=cfg['n_embd'], activation=activation,
                           poly_order=order or cfg['poly_order'], arch=cfg['arch'], init_seed=cfg['seed'],
                           n_expert=cfg['n_expert'] if moe else 0, top_k=cfg['top_k'],
                           expert_hidden=cfg['expert_hidden'])
        self.raw_model = GPT(config, verbose=False).to(self.device)
        self.model = torch.compile(self.raw_model) if mode == 'compiled' else self.raw_model
        device_type = 'cuda' if self.device.startswith('cuda') else 'cpu'
        # the optimizer train.py uses, with its default settings (AdamW's cost does not depend on them)
        self.optimizer = self.raw_model.configure_optimizers(device_type=device_type)
        self.ctx = (nullcontext() if cfg['dtype'] == 'float32' else
                    torch.autocast(device_type=device_type, dtype=torch.bfloat16))
        # the same random batch for every variant: the seed, not the variant, decides the token ids
        generator = torch.Generator().manual_seed(cfg['seed'])
        shape = (cfg['batch_size'], cfg['block_size'])
        self.x = torch.randint(cfg['vocab_size'], shape, generator=generator).to(self.device)
        self.y = torch.randint(cfg['vocab_size'], shape, generator=generator).to(self.device)
        self.tokens_per_step = cfg['batch_size'] * cfg['block_size']
        self.flops_per_token = self.raw_model.flops_per_token()
        self.times = []          # seconds per step, one sample per round
        self.peaks = []          # the matmul peak (FLOP/s) of each of those rounds, CPU only (else None)
        self.peak_mem = None     # bytes, CUDA only

    @staticmethod
    def name_of(activation, mode, moe, order=None):
        return f"{'moe-' if moe else ''}{activation}{f'-r{order}' if order else ''} {mode}"

    def saved_bytes_per_token(self):
        return saved_bytes_per_token(self)

    def cpu_seconds(self):
        return 0.0   # it runs in this process, whose CPU time is counted as this run's already

    def release(self):
        """Free the model, its optimizer state and its batch once timed; the measurements stay."""
        self.model = self.raw_model = self.optimizer = self.x = self.y = None

    def step(self):
        """One training step as train.py takes it, without gradient clipping and accumulation."""
        train_step(self.model, self.optimizer, self.x, self.y, self.ctx)

    def timed_steps(self, n):
        """Mean seconds per step over n steps."""
        return mean_step_seconds(self.step, n, self.device)

    def warm_up(self, steps):
        """steps untimed steps (compile, allocator, thread pool), then on CUDA the peak memory of one step. Returns
        (seconds taken, peak bytes or None)."""
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        if self.device.startswith('cuda'):
            self.measure_peak_memory()
        return time.perf_counter() - t, self.peak_mem

    def start_warm_up(self, steps):
        self.warm_up_result = self.warm_up(steps)   # in this process: done at once

    def finish_warm_up(self):
        return self.warm_up_result[0]

    def measure_peak_memory(self):
        """CUDA: the peak bytes of one step as if this were the only model in the process = the step's peak above
        what was allocated before it, plus this model's own parameters and optimizer state."""
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.step()
        torch.cuda.synchronize()
        transient = torch.cuda.max_memory_allocated(self.device) - before
        state = sum(t.numel() * t.element_size() for s in self.optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t))
        params = sum(p.numel() * p.element_size() for p in self.raw_model.parameters())
        self.peak_mem = transient + state + params


def saved_bytes_per_token(variant):
    """Bytes the autograd graph of one eager forward keeps for the backward, per token. Saved tensors are counted by
    unique storage (a tensor saved by two ops, or views of one buffer, count once) and parameter storages are left
    out, and so are buffers (the RoPE tables): they stay in memory whether or not a backward follows."""
    model = variant.raw_model
    resident = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    storages = {}

    def pack(t):
        if t.device.type != 'meta' and t.layout == torch.strided:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in resident:
                storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), variant.ctx:
        _, loss, aux = variant.raw_model(variant.x, variant.y, return_aux=True)
    del loss, aux   # drops the graph and everything it saved
    return sum(storages.values()) / variant.tokens_per_step


class VariantProcess:
    """A Variant built and stepped in a process of its own: the parent asks, the child steps and answers.

    Why: train.py holds one model, and a process that holds many measures something else. In one process, every
    model's step frees memory in sizes the next model cannot reuse, and glibc hands blocks of 32 MB and more out as
    fresh pages: with the 16 models of the CPU config in one process the eager MoE took ~130k page faults a step (~100k
    alone) and came out at 2.06-2.12x the dense step in two recordings; with each model in its own process, 1.67-1.74x
    (BENCHMARKS.md, "One model per process"). Round-robin stays: only one process steps at a time, the others wait on
    their pipe (idle: ~0.01 CPU s in 3 s), so a burst of outside load still slows all variants of one round alike."""

    def __init__(self, cfg, spec):
        import multiprocessing
        self.activation, self.mode, self.moe, self.order = spec
        self.key, self.spec, self.name = (spec[0], spec[3], spec[1], spec[2]), spec, Variant.name_of(*spec)
        self.device = cfg['device']
        self.times, self.peaks, self.peak_mem = [], [], None
        context = multiprocessing.get_context('spawn')   # never fork a process whose torch has started threads
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=serve_variant, args=(cfg, spec, child_conn), daemon=True)
        self.process.start()
        child_conn.close()

    def wait_until_built(self):
        self.flops_per_token, self.tokens_per_step, self.saved = self.reply()

    def reply(self):
        try:
            answer = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the process of {self.name} died (exit code {self.process.exitcode})") from None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def ask(self, request, *args):
        self.conn.send((request, args))
        return self.reply()

    def step(self):
        self.ask('step')

    def timed_steps(self, n):
        return self.ask('timed_steps', n)

    def start_warm_up(self, steps):
        """Ask for the warm-up without waiting, so that several processes warm up (compile) side by side."""
        self.conn.send(('warm_up', (steps,)))

    def finish_warm_up(self):
        """Wait for the warm-up started by start_warm_up; its seconds (the peak memory is kept, on CUDA)."""
        seconds, self.peak_mem = self.reply()
        return seconds

    def saved_bytes_per_token(self):
        return self.saved

    def cpu_seconds(self):
        """CPU seconds the process has used (None where /proc is missing): its steps are this run's, not others'."""
        return process_cpu_seconds(self.process.pid)

    def release(self):
        """Stop the process (it frees everything); the measurements stay here."""
        self.conn.send(('stop', ()))
        self.process.join(timeout=60)
        self.conn.close()


def serve_variant(cfg, spec, conn):
    """The child of a VariantProcess: build the variant, send (FLOPs per token, tokens per step, bytes saved per
    token), then answer requests until 'stop'. An error goes back to the parent as the exception, named."""
    requests = {'step': lambda v: v.step(), 'timed_steps': lambda v, n: v.timed_steps(n),
                'warm_up': lambda v, steps: v.warm_up(steps)}
    try:
        if cfg['malloc_keep_heap'] and not cfg['device'].startswith('cuda'):
            keep_freed_memory_in_heap()
        v = Variant(cfg, *spec)
        conn.send((v.flops_per_token, v.tokens_per_step, saved_bytes_per_token(v)))
        while True:
            request, args = conn.recv()
            if request == 'stop':
                return
            conn.send(requests[request](v, *args))
    except KeyboardInterrupt:   # Ctrl-C reaches the whole process group: the parent stops too
        return
    except Exception as e:   # noqa: BLE001 - the parent raises it, with the variant's name
        try:
            conn.send(RuntimeError(f"{Variant.name_of(*spec)}: {type(e).__name__}: {e}"))
        except OSError:   # the parent is gone
            pass


def keep_freed_memory_in_heap():
    """bench.py --malloc_keep_heap=True, in its process and its variants': glibc's malloc hands every block of 32 MB
    or more out as fresh mmap pages and unmaps it on free, and trims freed memory at the top of the heap, so the next
    step touches new pages, a page fault per 4 kB (the eager MoE's (B*T*top_k, hidden) activations: ~100k faults a
    step in a process of its own). With mmap and trimming off, freed memory stays for the next step, as PyTorch's
    caching allocator keeps it on GPU. Not train.py's default: it took the faults to 0 without a step time change
    beyond the noise (BENCHMARKS.md). Returns True when applied, False without glibc (macOS, musl)."""
    import ctypes
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 62))


def generation_config(cfg, activation):
    return GPTConfig(block_size=cfg['block_size'], vocab_size=cfg['gen_vocab_size'] or cfg['vocab_size'],
                     n_layer=cfg['n_layer'], n_head=cfg['n_head'], n_embd=cfg['gen_n_embd'] or cfg['n_embd'],
                     ffn_hidden=cfg['gen_ffn_hidden'], activation=activation, poly_order=cfg['poly_order'],
                     arch=cfg['arch'], init_seed=cfg['seed'])


class Generation:
    """One model's GPT.generate, timed with and without the KV cache: times[True] and times[False] hold the seconds
    of one call each per round. Untrained weights: the cost of a step does not depend on which token comes out."""

    def __init__(self, cfg, activation):
        self.activation, self.name = activation, f"{activation} generate"
        self.device, self.new_tokens = cfg['device'], cfg['gen_new_tokens']
        self.model = GPT(generation_config(cfg, activation), verbose=False).to(self.device).eval()
        self.ffn_hidden = self.model.transformer.h[0].mlp.hidden
        device_type = 'cuda' if self.device.startswith('cuda') else 'cpu'
        self.ctx = (nullcontext() if cfg['dtype'] == 'float32' else
                    torch.autocast(device_type=device_type, dtype=torch.bfloat16))
        self.prompt = torch.zeros((1, 1), dtype=torch.long, device=self.device)   # (B, T) = (1, 1)
        self.times = {True: [], False: []}

    def generate(self, kv_cache, new_tokens=None):
        with self.ctx:
            return self.model.generate(self.prompt, new_tokens or self.new_tokens, temperature=0.8, top_k=200,
                                       kv_cache=kv_cache)

    def time_round(self, cached_first):
        """One timed call with the cache and one without, in the given order (alternate it between rounds)."""
        for kv_cache in (True, False) if cached_first else (False, True):
            self.times[kv_cache].append(mean_step_seconds(lambda: self.generate(kv_cache), 1, self.device))
