"""onnxruntime's own KV-cache decode loop, for examples/bench_lm.py (host, or the emulated
aarch64 Python under qemu: qemu-aarch64 -L SYSROOT .../python3.11 lm_ort_guest.py ...).

    lm_ort_guest.py MODEL.onnx STEPS MODE [PROMPT_TOKENS]
    MODE: time    print the median seconds of one decode step (host timing)
          marker  each decode step between marker system calls (syscall(MARK, 1) ... (MARK, 2)),
                  after and before EMPTY empty windows (the markers' own cost, to subtract)

The loop: a session with 1 intra-op thread, default graph optimizations; the prompt fed one
window at a time, then greedy decoding. Each step runs ``run_with_ort_values`` with the
caches as OrtValues: the previous step's present outputs become this step's past inputs with
no copy to numpy; only the logits are read (for the argmax). Uses only onnxruntime and numpy
(the guest has no edgec).
"""
import ctypes, gc, sys, time
import numpy as np
import onnxruntime as ort

MARK = 0x7C0DE
EMPTY = 3


def main():
    model, steps, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    prompt = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    s = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
    ins = {i.name: i for i in s.get_inputs()}
    names = [x.name for x in s.get_outputs()]
    seq = ins["input_ids"].shape[1]
    pasts = [n for n in ins if n.startswith("past_")]
    shape = ins[pasts[0]].shape
    context = shape[2]
    sess = s._sess
    OV = ort.OrtValue.ortvalue_from_numpy

    def fresh():
        return {n: OV(np.zeros(shape, np.float32))._ortvalue for n in pasts}

    def run(cache, ids, pos):
        feeds = dict(cache)
        feeds["input_ids"] = OV(np.array([ids], np.int64))._ortvalue
        feeds["position"] = OV(np.array([pos], np.int64))._ortvalue
        outs = dict(zip(names, sess.run_with_ort_values(feeds, names, None)))
        for n in pasts:
            cache[n] = outs["present" + n[4:]]
        return outs["logits"].numpy()[0]

    cache, pos, tok = fresh(), 0, 84
    for _ in range(prompt):  # the prompt, a window of S at a time (S = 1: one token each)
        logits = run(cache, [tok] + [0] * (seq - 1), pos)
        pos += 1
    sc = ctypes.CDLL(None).syscall if mode == "marker" else None
    if sc:
        sc.restype = ctypes.c_long
        sc.argtypes = [ctypes.c_long, ctypes.c_long]
        for _ in range(EMPTY):
            sc(MARK, 1); sc(MARK, 2)
    gc.collect()
    gc.disable()
    times = []
    for _ in range(steps):
        if pos + seq > context:  # full: start again (not measured)
            cache, pos = fresh(), 0
        tok = int(np.argmax(logits[0]))
        if sc:
            sc(MARK, 1)
        t0 = time.perf_counter()
        logits = run(cache, [tok] + [0] * (seq - 1), pos)
        times.append(time.perf_counter() - t0)
        if sc:
            sc(MARK, 2)
        pos += 1
    if sc:
        for _ in range(EMPTY):
            sc(MARK, 1); sc(MARK, 2)
    if mode == "time":
        print(f"median_s {sorted(times)[len(times) // 2]:.9f}")


main()
