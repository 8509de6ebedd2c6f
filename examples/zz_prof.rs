use std::time::Instant;
use wgpu_rnn::gpu::{storage, Context, MatMul, MatMulDesc};
fn main() {
    let ctx = Context::new().unwrap();
    let shapes = [
        ("dW_hh k512", 512, 128, 512, true, false),
        ("dW_hh k256", 512, 128, 256, true, false),
        ("dW_hh k1024", 512, 128, 1024, true, false),
        ("dW_ih k512", 512, 50, 512, true, false),
        ("dW_ih k1024", 512, 50, 1024, true, false),
        ("dW_hh k2048", 512, 128, 2048, true, false),
        ("dW_hh k4096", 512, 128, 4096, true, false),
        ("dW_ih k2048", 512, 50, 2048, true, false),
        ("dW_ih k4096", 512, 50, 4096, true, false),
        ("dX m16384 n50 k512", 16384, 50, 512, false, false),
        ("dX m16384 n52 k512", 16384, 52, 512, false, false),
        ("sq 1024", 1024, 1024, 1024, false, false),
    ];
    for (name, m, n, k, ta, tb) in shapes {
        let mm = MatMul::new(&ctx, MatMulDesc { m, n, k, trans_a: ta, trans_b: tb, alpha: 1.0, beta: 0.0, bias: false }).unwrap();
        let a = storage(&ctx, "a", m * k).unwrap();
        let b = storage(&ctx, "b", k * n).unwrap();
        let c = storage(&ctx, "c", m * n).unwrap();
        let mut best = f64::MAX;
        for _ in 0..4 {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            mm.record(&mut enc, &a, &b, &c, None, 1).unwrap();
            let t = Instant::now();
            ctx.queue.submit([enc.finish()]);
            ctx.wait().unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("{name}: {:.1} ms, {:.1} GFLOP/s", best * 1e3, mm.flops() / best / 1e9);
    }
}
