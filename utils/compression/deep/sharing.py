"""Weight sharing (Deep Compression, stage two): per layer a codebook of 2^b centroids and an index per weight.

Han, Mao, Dally, "Deep Compression", ICLR 2016 (arXiv 1510.00149), section 3. For every Conv2d/Linear weight
(utils.compression.weight.magnitude.prunable_layers) the non-zero entries are clustered by 1-D k-means into 2^b clusters, starting
from centroids spaced linearly between their min and max (the paper's best initialisation: it keeps the few large
weights, which matter most, represented). Zeros stay zeros: they form an extra, fixed cluster with value 0, so
the sparsity pattern (the masks) never changes.

The edge layers (the first conv and the Detect output convs, < 1.5 % of a YOLOv5's non-zero weights) get
2^edge_bits centroids (default 8 bits, as Han et al.'s conv layers): at 4 bits the Detect outputs alone cost a 70 %
sparse yolov5n 0.20 of its 0.80 mAP50-95 one-shot, all other layers together 0.04 (benchmarks/share_sensitivity.py).

The codebook + index is the truth; the float weights are derived from it (weight = codebook[index], 0 in the zero
cluster), like a pruning mask next to its weight.

Centroid fine-tuning (`WeightSharing` hooks, train.py --share-bits) uses the paper's rule: the gradient of a
centroid is the sum of the gradients of the weights that share it (`centroid_grads`; it is the true gradient of
the loss with respect to the shared value). The step size is a separate choice (`step`):

- 'mean' (default): each centroid's learning rate is the optimizer's LR divided by its member count, so a
  centroid moves by the LR times its members' mean gradient: as far as its members would move on average in
  plain fine-tuning. Its gradient-norm share is at most that of its members' own gradients, so the global
  clip_grad_norm_ of train.py acts as it does in plain training.
- 'sum': the LR as is, on the summed gradient. A centroid of n members then steps about n times further than
  one weight (yolov5n layers hold 10^3-10^5 weights per centroid), and its replicated gradient dominates the
  global gradient norm, so the clip shrinks every other parameter's step as well. Measured on the embedded set
  (yolov5n, global DNS, 5 epochs, 3/4 bits): 'sum' ended 0.009-0.013 mAP50-95 above 'mean' at 70 % sparsity and
  0.054-0.055 below it at 90 % (README, docs/weight-pruning.md).

The centroids are not separate parameters: before the optimizer step every member weight's gradient is replaced
by its cluster's step gradient (0 in the zero cluster). Members start equal and get equal gradients, weight
decay and optimizer state, so an elementwise optimizer (SGD, Adam) moves them exactly like one parameter holding
the centroid; after the step the centroid is read back as the mean of its members (exact when they are equal) and
written to all of them. So the optimizer, its param groups and state, GradScaler, gradient accumulation, EMA and
`state_dict()` see a plain model whose weights take at most 2^b non-zero values per layer, and a saved checkpoint
loads anywhere.

How train.py calls it (next to DNS's hooks, see utils/compression/weight/dns.py):

    share = WeightSharing(model, bits=4)              # after the model is on its device; k-means on its weights
    if resume: share.load_state_dict(ckpt['share'])
    share.apply_to(ema.ema)                           # the EMA starts from the shared weights
    ...
    scaler.scale(loss).backward()
    if ni - last_opt_step >= accumulate:
        scaler.unscale_(optimizer)
        share.on_gradients()                          # grad <- the cluster's step gradient (before clipping, so
        clip_grad_norm_(model.parameters(), 10.0)     #   the clip bounds the centroid steps actually taken)
        scaler.step(optimizer); scaler.update(); optimizer.zero_grad()
        share.after_step()                            # centroid <- mean of members; weights <- codebook[index]
        ema.update(model)
    # end of epoch, before val and save:
    share.apply_to(ema.ema); ckpt['share'] = share.state_dict()

DDP: gradients are all-reduced before the hooks; after_step broadcasts each layer's codebook from rank 0, so
every rank holds identical centroids even when the summed gradients differ in the last bit (CUDA atomics).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.yolo import Detect
from utils.compression.hooks import TrainingHook
from utils.compression.layers import de_parallel, distributed, prunable_layers
from utils.general import colorstr

BITS = range(2, 9)  # allowed bits per index: 4 .. 256 centroids per layer
EDGE_BITS = 8  # default bits of the edge layers (first conv, Detect outputs): see edge_layers
STEPS = ('mean', 'sum')  # centroid step: LR / members on the summed gradient, or the LR as is (see the module doc)


def kmeans_1d(values: Tensor, k: int, max_iter: int = 300) -> tuple[Tensor, Tensor]:
    """1-D k-means (Lloyd) with linear initialisation: returns (centroids float64 [k] ascending, assignment int64).

    Deterministic, and cheap in 1-D: the distinct values are sorted once, every cluster is then a contiguous run
    of them (between midpoints of neighbouring centroids; a value on a midpoint joins the lower cluster) and its
    mean comes from prefix sums. Centroids start at linspace(min, max, k); an empty cluster keeps
    its centroid. Stops when no value changes cluster (or after ``max_iter`` rounds). Computed in float64 on CPU.
    """
    x = values.detach().reshape(-1).to('cpu', torch.float64)
    if k < 1:
        raise ValueError(f'k-means needs k >= 1 clusters, got {k}')
    if x.numel() == 0:
        return torch.zeros(k, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    # equal values always share a cluster: iterate over the distinct values with their counts (weights read from an
    # FP16 checkpoint have at most 65536), sorted ascending
    xs, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    zero = torch.zeros(1, dtype=torch.float64)
    n_before = torch.cat([zero, counts.double().cumsum(0)])  # values before each distinct value
    sum_before = torch.cat([zero, (xs * counts).cumsum(0)])
    centroids = torch.linspace(float(xs[0]), float(xs[-1]), k, dtype=torch.float64)
    last = torch.tensor([xs.numel()])
    edges = None
    for _ in range(max_iter):
        # cluster j holds the values in (mid[j-1], mid[j]]: a contiguous run of the sorted distinct values
        mid = (centroids[1:] + centroids[:-1]) / 2
        new_edges = torch.cat([torch.zeros(1, dtype=torch.int64), torch.searchsorted(xs, mid, right=True), last])
        if edges is not None and torch.equal(new_edges, edges):
            break
        edges = new_edges
        n = n_before[edges[1:]] - n_before[edges[:-1]]
        centroids = torch.where(n > 0, (sum_before[edges[1:]] - sum_before[edges[:-1]]) / n.clamp(min=1), centroids)
    cluster_of_value = torch.repeat_interleave(torch.arange(k), edges[1:] - edges[:-1])
    assignment = cluster_of_value[inverse]
    return centroids, assignment


class WeightSharing(TrainingHook):
    """2^bits shared values per Conv2d/Linear weight of ``model``, with the hooks of centroid fine-tuning.

    Per managed weight (in `names` order): `codebooks[i]` (float32, K = `ks[i]` centroids, on the weight's device)
    and `index[i]` (int32, the weight's shape; values 0..K-1 pick a centroid, K marks a zero). K is 2^bits, and
    2^edge_bits for the edge layers (`edge_layers`: the first conv and the Detect output convs; None = bits).
    Construction runs k-means on the current non-zero weights and writes the shared values into the model. See the
    module docstring for where the hooks go in a training step.
    """

    key = 'share'  # checkpoint key of state_dict()

    def __init__(self, model: nn.Module, bits: int, step: str = 'mean', edge_bits: int | None = EDGE_BITS) -> None:
        for b in (bits, bits if edge_bits is None else edge_bits):
            if b not in BITS:
                raise ValueError(f'weight sharing needs 2 <= bits <= 8 (4 to 256 centroids per layer), got {b}')
        if step not in STEPS:
            raise ValueError(f"centroid step must be one of {', '.join(STEPS)}, got {step!r}")
        self.step = step
        layers = prunable_layers(model)
        if not layers:
            raise ValueError('weight sharing found no Conv2d/Linear layers in the model')
        self.bits, self.k = bits, 1 << bits  # the body's bits and centroids per layer
        self.edge_bits = bits if edge_bits is None else edge_bits
        self.layer_names = [name for name, _ in layers]
        self.names = [f'{name}.weight' if name else 'weight' for name in self.layer_names]
        self.modules = [module for _, module in layers]
        edges = edge_layers(model)
        self.edge = [name in edges for name in self.layer_names]
        self.layer_bits = [self.edge_bits if name in edges else bits for name in self.layer_names]
        self.ks = [1 << b for b in self.layer_bits]  # centroids per layer; index ks[i] marks a zero
        self.codebooks, self.index = [], []
        for module, k in zip(self.modules, self.ks):
            w = module.weight.detach()
            keep = (w != 0).cpu()
            centroids, assignment = kmeans_1d(w.cpu()[keep], k)
            index = torch.full(w.shape, k, dtype=torch.int32)
            index[keep] = assignment.to(torch.int32)
            self.codebooks.append(centroids.to(w.device, torch.float32))
            self.index.append(index.to(w.device))
        self._count_members()
        self._write(self.modules)

    # ---- the two hooks around optimizer.step() ----

    @torch.no_grad()
    def centroid_grads(self) -> list[Tensor | None]:
        """Per managed weight: the gradient of each of its 2^b centroids, the sum of its members' gradients (float32
        [2^b]; None where the weight has no gradient). The paper's rule: d loss / d centroid."""
        out = []
        for module, index, k in zip(self.modules, self.index, self.ks):
            g = module.weight.grad
            out.append(None if g is None else torch.zeros(k + 1, dtype=torch.float32, device=g.device).index_add_(
                0, index.view(-1), g.view(-1).float())[:k])
        return out

    @torch.no_grad()
    def on_gradients(self) -> None:
        """Before gradient clipping: replace each managed weight's gradient by its centroid's step gradient: the summed cluster gradient,
        divided by the member count for step 'mean' (0 for zero weights, whose cluster never moves)."""
        for module, index, count, grads in zip(self.modules, self.index, self._members, self.centroid_grads()):
            if grads is None:
                continue
            if self.step == 'mean':
                grads = grads / count[:-1].to(grads.device, grads.dtype).clamp(min=1)
            g = module.weight.grad
            g.copy_(torch.cat([grads, grads.new_zeros(1)])[index.view(-1).long()].view_as(g))

    @torch.no_grad()
    def after_step(self) -> None:
        """Read each centroid back as the mean of its members, make ranks agree (DDP), rewrite the weights."""
        self._read(self.modules, broadcast=distributed())
        self._write(self.modules)

    # ---- other models (EMA) ----

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> None:
        """Share the weights of a model with the same layers (the EMA copy): each cluster takes its members' mean.

        Only that model changes (its own centroids are the means of its own weights, e.g. EMA-averaged ones);
        this object's codebooks are untouched.
        """
        found = dict(de_parallel(model).named_modules())
        modules = []
        for name, index in zip(self.layer_names, self.index):
            weight = getattr(found.get(name), 'weight', None)
            if weight is None or weight.shape != index.shape:
                raise ValueError(f'WeightSharing.apply_to: model has no weight {name}.weight of shape '
                                 f'{tuple(index.shape)}')
            modules.append(found[name])
        self._write(modules, self._means(modules))

    # ---- codebook <-> weights ----

    def _count_members(self) -> None:
        self._members = [torch.bincount(index.view(-1).long(), minlength=k + 1).double()
                         for index, k in zip(self.index, self.ks)]  # per cluster, the zero cluster last

    def _means(self, modules: list[nn.Module]) -> list[Tensor]:
        """Per layer: the mean (float64) of the member weights of each cluster; a cluster without members keeps
        this object's centroid."""
        out = []
        for module, index, count, codebook, k in zip(modules, self.index, self._members, self.codebooks, self.ks):
            w = module.weight.detach()
            sums = torch.zeros(k + 1, dtype=torch.float64, device=w.device).index_add_(0, index.view(-1),
                                                                                          w.view(-1).double())
            means = sums[:k] / count[:k].clamp(min=1)  # exact when the members are equal (see module doc)
            out.append(torch.where(count[:k] > 0, means, codebook.double()))
        return out

    def _read(self, modules: list[nn.Module], broadcast: bool = False) -> None:
        """codebooks <- the member means of ``modules``' weights (rank 0's under DDP when ``broadcast``)."""
        for i, means in enumerate(self._means(modules)):
            c = means.float()
            if broadcast:
                dist.broadcast(c, src=0)
            self.codebooks[i] = c

    def _write(self, modules: list[nn.Module], codebooks: list[Tensor] | None = None) -> None:
        """weights <- codebook[index] (0 in the zero cluster), in the weights' dtype."""
        with torch.no_grad():
            for module, index, codebook in zip(modules, self.index, codebooks or self.codebooks):
                w = module.weight
                table = torch.cat([codebook.to(w.device, w.dtype), torch.zeros(1, dtype=w.dtype, device=w.device)])
                w.copy_(table[index.long()])

    def weights(self) -> list[Tensor]:
        """The derived weights codebook[index] (float32, zeros in place), one per managed layer."""
        return [torch.cat([c, c.new_zeros(1)])[i.long()] for c, i in zip(self.codebooks, self.index)]

    # ---- reports ----

    def final_report(self) -> str:
        return f"{colorstr('weight sharing: ')}codebooks per layer\n{self.layer_table()}"

    def layer_table(self) -> str:
        """Per-layer table: name, shape, non-zero weights, centroids in use, centroid range; then the total."""
        rows = [f"{'layer':<40}{'shape':>22}{'non-zero':>12}{'clusters':>10}{'min':>11}{'max':>11}"]
        total, used_total = 0, 0
        for name, index, count, codebook in zip(self.names, self.index, self._members, self.codebooks):
            used = count[:-1] > 0
            nnz = int(count[:-1].sum())
            c = codebook[used.to(codebook.device)]
            lo, hi = (f'{float(c.min()):>11.4g}', f'{float(c.max()):>11.4g}') if c.numel() else ('-' * 11, '-' * 11)
            rows.append(f"{name:<40}{'x'.join(map(str, index.shape)):>22}{nnz:>12}{int(used.sum()):>10}{lo}{hi}")
            total, used_total = total + nnz, used_total + int(used.sum())
        edge = '' if self.edge_bits == self.bits else f', first conv and Detect outputs {self.edge_bits} bits'
        rows.append(f"{f'total ({self.bits} bits{edge})':<62}{total:>12}{used_total:>10}")
        return '\n'.join(rows)

    # ---- checkpoints (--resume) ----

    def state_dict(self) -> dict:
        """CPU state: bits, float32 codebooks and int16 indices (K = zero) by parameter name."""
        return {'bits': self.bits, 'layer_bits': dict(zip(self.names, self.layer_bits)),
                'codebooks': {n: c.to('cpu', copy=True) for n, c in zip(self.names, self.codebooks)},
                'index': {n: i.to('cpu', torch.int16) for n, i in zip(self.names, self.index)}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()` and write its shared values into the model (one-line ValueError on mismatch)."""
        if int(state.get('bits', -1)) != self.bits:
            raise ValueError(f"weight sharing state has {state.get('bits')} bits, this run {self.bits}")
        layer_bits = state.get('layer_bits') or dict.fromkeys(self.names, self.bits)  # written before per-layer bits
        if set(layer_bits) != set(self.names) or any(int(b) not in BITS for b in layer_bits.values()):
            raise ValueError(f'weight sharing state has per-layer bits for {len(layer_bits)} weights that do not '
                             f'match this model ({len(self.names)} Conv2d/Linear weights)')
        self.layer_bits = [int(layer_bits[n]) for n in self.names]  # the state's bits are the truth on resume
        self.ks = [1 << b for b in self.layer_bits]
        self.edge_bits = next((b for b, e in zip(self.layer_bits, self.edge) if e), self.bits)
        codebooks, index = state['codebooks'], state['index']
        if set(index) != set(self.names) or set(codebooks) != set(self.names):
            raise ValueError(f'weight sharing state holds {len(index)} weights that do not match this model '
                             f'({len(self.names)} Conv2d/Linear weights)')
        for i, (name, old, k) in enumerate(zip(self.names, self.index, self.ks)):
            if index[name].shape != old.shape or codebooks[name].shape != (k,):
                raise ValueError(f'weight sharing state for {name} does not match the model weight {tuple(old.shape)}')
            if int(index[name].min()) < 0 or int(index[name].max()) > k:
                raise ValueError(f'weight sharing state for {name} has indices outside 0..{k}')
            self.index[i] = index[name].to(old.device, torch.int32)
            self.codebooks[i] = codebooks[name].to(self.codebooks[i].device, torch.float32)
        self._count_members()
        self._write(self.modules)


def share_weights(model: nn.Module, bits: int, step: str = 'mean', edge_bits: int | None = EDGE_BITS) -> WeightSharing:
    """One-shot weight sharing: k-means on each Conv2d/Linear weight of ``model`` (in place); returns the codebooks."""
    return WeightSharing(model, bits, step, edge_bits)


def edge_layers(model: nn.Module) -> set[str]:
    """Names of the layers the input and the outputs pass through alone: the first Conv2d/Linear and the output
    convs of every Detect head. They hold < 1.5 % of a YOLOv5's non-zero weights and are the most sensitive to
    sharing (docs/deep-compression.md)."""
    layers = prunable_layers(model)
    if not layers:
        return set()
    names = {layers[0][0]}
    heads = [m for m in de_parallel(model).modules() if isinstance(m, Detect)]
    out_convs = {id(c) for h in heads for c in h.m}
    return names | {n for n, m in layers if id(m) in out_convs}
