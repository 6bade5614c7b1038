//! GFLOP/s of the gemm crate (the matmul under candle and under our convolutions) on this CPU:
//! a large square product, which bounds what any layer can reach, and the products of
//! ResNet18's and C2's convolutions as our im2col path calls them (out × in·k² times
//! in·k² × pixels·samples). `BENCHMARKS.md` compares these against the time the models take.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo run --release --example gemm_peak` (threads: gemm's rayon
//! pool; 1 for one core).

use std::time::Instant;

fn gflops(m: usize, n: usize, k: usize, reps: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    let par = if rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let mut run = || {
        // SAFETY: a is m×k, b k×n, c m×n, all row-major and exactly that long; c aliases
        // neither.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        }
    };
    run();
    run();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        run();
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

fn main() {
    println!(
        "threads {} (best of several calls, f32)",
        rayon::current_num_threads()
    );
    println!("{:<44} {:>8}", "product (m × k · k × n)", "GFLOP/s");
    let cases: [(&str, usize, usize, usize, usize); 7] = [
        ("square 2048", 2048, 2048, 2048, 5),
        (
            "ResNet18 3×3 64→64, 32×32 px, 4 samples",
            64,
            4 * 1024,
            576,
            20,
        ),
        (
            "ResNet18 3×3 128→128, 16×16, 4 samples",
            128,
            4 * 256,
            1152,
            20,
        ),
        (
            "ResNet18 3×3 256→256, 8×8, 16 samples",
            256,
            16 * 64,
            2304,
            20,
        ),
        (
            "ResNet18 3×3 512→512, 4×4, 32 samples",
            512,
            32 * 16,
            4608,
            10,
        ),
        ("C2 3×3 64→64, 32×32, 1 sample", 64, 1024, 576, 50),
        (
            "its input gradient (Wᵀ dy: 576 × 64 · 64 × 1024)",
            576,
            1024,
            64,
            50,
        ),
    ];
    for (name, m, n, k, reps) in cases {
        println!("{name:<44} {:>8.1}", gflops(m, n, k, reps));
    }
}
