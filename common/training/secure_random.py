"""Randomness no one outside the site can predict or replay: DP-SGD noise and Poisson sampling
from a ChaCha20 keystream keyed by the OS CSPRNG, and torch generators with full-entropy state.

Why. DP-SGD's guarantee rests on two random choices the adversary must not know: which records
each step samples and the Gaussian noise added to the clipped gradient sum. Seeded from the run
seed (chosen by the server, default 0), the round and the site id, both are known to the
coordinator, who can replay the site's training, subtract the noise and read the un-noised
gradient sum (issue 13 measured a replay difference of 0.0). Threat model: the coordinator is
honest-but-curious and may send any configuration; outsiders see the network; only the site's own
machine is trusted. So in deployment nothing the server sends, and nothing that leaves, may
determine the noise or the sampling.

What is used (`CsprngSource`). A ChaCha20 keystream (the `cryptography` package, OpenSSL) under
a 256-bit key drawn from ``secrets`` (the OS CSPRNG) when the source is made; the key never leaves
process memory and is never derived from a seed. It is re-keyed from the OS every `REKEY_BYTES`
of output and in a forked child (so two processes never share a stream). From it:
- Poisson sampling: record i is in a batch iff its 53-bit uniform ``u_i < q`` (float64; exact
  to 2^-53, finer than Opacus' float32 ``torch.rand < q``).
- Gaussian noise: Box-Muller in float64 on 53-bit uniforms, hardened against the
  floating-point attack (Mironov 2012; Jin et al., arXiv:2112.05307) with the defence of Opacus'
  ``secure_mode`` (Holohan & Braghin, arXiv:2107.10138, n = 2): each coordinate is the sum of
  four independent normals divided by 2 (same variance). The noise is added to the clipped
  gradient sum in float64 and the result rounded to the gradient's dtype (float32), which is
  post-processing. Opacus does the same sum in float32 (torch's default dtype), where their
  attack-cost estimate 2^(p(2n-1)) is 2^72 (p = 24 mantissa bits); in float64 it is the 2^159
  their documentation quotes.
ChaCha20 is a stream cipher: without the key its output is computationally indistinguishable
from uniform bits, so there is no seed to search and no state to recover, however many noised
values leave the site.

Why not the alternative (candidate a, a torch generator reseeded from the OS before each step
plus Opacus' ``secure_mode``). It is 16 ms a step cheaper (float32 arithmetic, below), but its
guarantee is weaker: (1) torch's CPU generator keeps only the low 32 bits of ``manual_seed``
(``manual_seed(s)`` and ``manual_seed(s + 2**32)`` give the same stream), so a 64-bit
per-step seed is a 2^32 search per step, and the released weights tell a right guess (the
residual is a clipped sum of norm <= B * C) from a wrong one; (2) even with its whole 19968-bit
state filled from the OS (`secure_generator` does that), MT19937 is linear and not a
cryptographic generator. Opacus' own ``PrivacyEngine(secure_mode=True)`` needs ``torchcsprng``,
unmaintained since 2021 and not built for torch 2.13; its DPOptimizer's secure path needs only a
generator, which is what candidate (a) feeds it.

Cost (bench/secure_noise.py -> bench/results/secure_noise.json: ResNet-18 GroupNorm width 16 at
28 px, 700k parameters, batch 64, one Poisson draw over 4708 records per step; one torch thread,
median process CPU time of 12 rotated round-robin steps after 3 warm-up, shared 2-core machine):

    candidate                                  step ms   vs seeded   noise alone ms
    seeded (simulation, today)                   336       1.000          3.2
    seeded + Opacus secure_mode (4-sum only)     347       1.034         13.0
    a: OS-reseeded generator + secure_mode       347       1.032         13.4
    b: ChaCha20, float64 4-sum (chosen)          363       1.081         30.7
    (b with Opacus' float32 arithmetic: noise alone 18.0 ms, not used)

So secure randomness costs about 8 % of a step (27 ms on 336): ~10 ms is the floating-point
defence itself (four normals per coordinate instead of one, as in Opacus), ~5 ms the ChaCha20
keystream (> 4 GB/s here) and its conversion, ~13 ms the float64 precision, bought for the
2^159 attack-cost level instead of float32's 2^72. Poisson sampling is < 0.1 ms per step.
(Earlier 2-thread runs on the same machine were swamped by other processes, wall medians of
1.1-2.1 s, and are not used.)

What stays seeded under ``secure=True``: the probe inputs that pick Opacus' grad-sample mode,
data augmentation and any dropout. They are not privacy-relevant: DP-SGD's guarantee holds
conditionally on any data-independent randomness of that kind (each record's contribution is
still clipped to ``max_grad_norm`` and covered by the noise), so knowing them helps no one.

`secure_generator` is for other releases that want a plain ``torch.Generator`` (a noised count,
a confusion matrix): a fresh full-entropy generator per release, no seed to guess. For DP-SGD,
use `CsprngSource`.
"""

from __future__ import annotations

import math
import os
import secrets

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

REKEY_BYTES = 1 << 30    # new OS key after 1 GiB of keystream (ChaCha20's 32-bit block counter
                         # in OpenSSL's 16-byte IV covers 256 GiB)
_HARDENING_TERMS = 4     # normals summed per coordinate (Opacus secure_mode, n = 2)
_MASK_53 = (1 << 53) - 1  # the bits of a float64 uniform on [0, 1)
_CHUNK_BYTES = 1 << 23    # keystream produced per call into the kept buffer (8 MiB)
_MT_WORDS = 624          # MT19937 state words
_MT_OFFSET = 24          # torch CPU state: initial seed u64, left i32, seeded i32, next u64
_CPU_STATE_BYTES = 5056  # sizeof(CPUGeneratorImplState) in torch 2.x


class CsprngSource:
    """Uniforms, Poisson index sets and hardened Gaussian noise from a ChaCha20 keystream keyed
    by the OS CSPRNG (module docstring). Not seedable, by design: two sources never agree."""

    def __init__(self) -> None:
        self._zeros, self._out = b"", bytearray()   # keystream buffers, grown on first use
        self._rekey()

    def _rekey(self) -> None:
        key = secrets.token_bytes(32)   # fresh key, so a zero nonce is never reused
        self._stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        self._left = REKEY_BYTES
        self._pid = os.getpid()

    def _keystream(self, count: int) -> memoryview:
        """``count`` (<= `_CHUNK_BYTES`) keystream bytes in a reused buffer, valid until the
        next call (encrypting into a kept buffer is ~3x faster than allocating one)."""
        if os.getpid() != self._pid:   # a forked child must not repeat its parent's stream
            self._rekey()
        if len(self._zeros) < count:
            self._zeros = bytes(count)
            self._out = bytearray(count + 64)   # update_into's block-size slack
        done = 0
        while done < count:
            if self._left == 0:
                self._rekey()
            take = min(count - done, self._left)
            self._stream.update_into(memoryview(self._zeros)[:take], memoryview(self._out)[done:])
            self._left -= take
            done += take
        return memoryview(self._out)[:count]

    def random_bytes(self, count: int) -> bytes:
        """``count`` keystream bytes (cryptographically random)."""
        return b"".join(bytes(self._keystream(min(_CHUNK_BYTES, count - start)))
                        for start in range(0, count, _CHUNK_BYTES))

    def uniform(self, count: int) -> np.ndarray:
        """``count`` float64 uniforms on [0, 1), each from 53 random bits."""
        out = np.empty(count, dtype=np.float64)
        per_chunk = _CHUNK_BYTES // 8
        for start in range(0, count, per_chunk):
            stop = min(count, start + per_chunk)
            raw = np.frombuffer(self._keystream(8 * (stop - start)), dtype="<i8")
            np.multiply(np.bitwise_and(raw, _MASK_53), 2.0 ** -53, out=out[start:stop])
        return out

    def poisson_indices(self, n: int, sample_rate: float) -> np.ndarray:
        """One Poisson batch: the indices in ``range(n)`` each included with prob. ``q``."""
        return np.flatnonzero(self.uniform(n) < sample_rate).astype(np.int64)

    def normal(self, shape: tuple[int, ...], std: float) -> torch.Tensor:
        """float64 N(0, std^2) noise of ``shape`` on the CPU, hardened against the
        floating-point attack: each value is the sum of four Box-Muller normals / 2."""
        count = math.prod(shape)
        if std == 0 or count == 0:
            return torch.zeros(shape, dtype=torch.float64)
        pairs = _HARDENING_TERMS * count // 2            # a Box-Muller pair gives two normals
        u = torch.from_numpy(self.uniform(2 * pairs)).view(2, pairs)
        radius = u[0].neg_().log1p_().mul_(-2.0).sqrt_()  # log(1 - u), 1 - u in (0, 1]
        angle = u[1].mul_(2.0 * math.pi)
        cos_terms = radius * angle.cos()
        sin_terms = radius.mul_(angle.sin_())
        total = (cos_terms[:count] + sin_terms[:count]).add_(cos_terms[count:])
        total.add_(sin_terms[count:]).mul_(std / math.sqrt(_HARDENING_TERMS))
        return total.view(shape)

    def noise_like(self, reference: torch.Tensor, std: float) -> torch.Tensor:
        """`normal` noise shaped like ``reference``, in its dtype and on its device (pass a
        float64 reference to keep full precision, as `common.privacy.mechanisms` does)."""
        noise = self.normal(tuple(reference.shape), std)
        return noise.to(device=reference.device, dtype=reference.dtype)

    def add_noise(self, value: torch.Tensor, std: float) -> torch.Tensor:
        """``value`` + N(0, std^2) noise, added in float64 and then rounded to ``value``'s dtype
        (on its device): the rounding is post-processing of the hardened float64 mechanism."""
        noised = value.detach().to("cpu", torch.float64) + self.normal(tuple(value.shape), std)
        return noised.to(device=value.device, dtype=value.dtype)


def _full_entropy_cpu_generator() -> torch.Generator:
    """A CPU generator whose whole MT19937 state (624 words) comes from the OS CSPRNG;
    ``manual_seed`` alone would give only 2^32 possible streams."""
    seed = secrets.randbits(64)
    generator = torch.Generator("cpu").manual_seed(seed)
    state = generator.get_state().numpy().copy()
    first_word = int.from_bytes(state[_MT_OFFSET:_MT_OFFSET + 8].tobytes(), "little")
    if (state.size != _CPU_STATE_BYTES or int.from_bytes(state[:8].tobytes(), "little") != seed
            or first_word != seed & 0xFFFFFFFF):
        raise RuntimeError(f"secure_generator: torch {torch.__version__}'s CPU generator state "
                           f"has an unexpected layout ({state.size} bytes, expected "
                           f"{_CPU_STATE_BYTES}); cannot fill its MT19937 state securely")
    words = np.frombuffer(secrets.token_bytes(4 * _MT_WORDS), dtype="<u4").astype("<u8")
    state[_MT_OFFSET:_MT_OFFSET + 8 * _MT_WORDS] = words.view(np.uint8)
    generator.set_state(torch.from_numpy(state))
    return generator


def secure_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` that nothing outside this process can replay:
    on the CPU its whole MT19937 state is drawn from the OS CSPRNG; elsewhere (CUDA's Philox,
    which uses all 64 seed bits) it is seeded with 64 OS-random bits. Make one per release and
    do not reuse it for DP-SGD noise (`CsprngSource` is the cryptographic source)."""
    device = torch.device(device)
    if device.type == "cpu":
        return _full_entropy_cpu_generator()
    return torch.Generator(device).manual_seed(secrets.randbits(64))
