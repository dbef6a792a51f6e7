# bfloat16 prefill, avx512 (V widened, float FMA) against avx512_bf16 (P rounded, vdpbf16ps PV) alternating in one process, 2 threads: python bench/pv_vdpbf16ps.py
import time, numpy as np, attnkit, ml_dtypes, statistics as st
bf=ml_dtypes.bfloat16
attnkit.set_num_threads(2)
rng=np.random.default_rng(0)
cases=[("B1 H8 L1024 D64",(1,8,1024,64),{}),("causal B1 H8 L1024 D64",(1,8,1024,64),dict(is_causal=True)),("B1 H16 L2048 D128",(1,16,2048,128),{})]
for name,shape,kw in cases:
    q,k,v=(rng.standard_normal(shape).astype(bf) for _ in range(3))
    B,H,L,D=shape
    flop=4*B*H*L*L*D*(0.5 if kw else 1)
    t={'avx512':[], 'avx512_bf16':[]}
    for isa in t: attnkit.set_isa(isa); attnkit.scaled_dot_product_attention(q,k,v,**kw)
    for rnd in range(7):
        for isa in (['avx512','avx512_bf16'] if rnd%2==0 else ['avx512_bf16','avx512']):
            attnkit.set_isa(isa)
            for _ in range(3):
                t0=time.perf_counter(); attnkit.scaled_dot_product_attention(q,k,v,**kw); t[isa].append(time.perf_counter()-t0)
    m={i:st.median(x) for i,x in t.items()}
    print(f"{name}: widen (avx512) {m['avx512']*1e3:.2f} ms {flop/m['avx512']/1e9:.0f} GFLOP/s | vdpbf16ps PV (avx512_bf16) {m['avx512_bf16']*1e3:.2f} ms {flop/m['avx512_bf16']/1e9:.0f} GFLOP/s | ratio {m['avx512']/m['avx512_bf16']:.2f}x")
