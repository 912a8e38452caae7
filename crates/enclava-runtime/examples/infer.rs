//! Loads a generated model from memory, classifies a sample input and times loads and runs:
//! `cargo run -p enclava-runtime --release --example infer [mobilenet_v2|tiny] [runs]`.

use std::time::Duration;

use enclava_runtime::bench::{Summary, summarize, time_inference, time_load};
use enclava_runtime::generate::{mobilenet_v2, sample_input, tiny};
use enclava_runtime::{Model, RuntimeError};

fn main() -> Result<(), RuntimeError> {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "mobilenet_v2".into());
    let runs = args.next().and_then(|n| n.parse().ok()).unwrap_or(50);
    let bytes = match which.as_str() {
        "tiny" => tiny(1),
        _ => mobilenet_v2(1),
    };
    let model = Model::load(&bytes)?;
    let input = sample_input(model.input_shape(), 1)?;
    let output = model.run(&input)?;
    println!("{which}: {} bytes, input {:?}, output {:?}", bytes.len(), model.input_shape(), output[0].shape());
    for (class, score) in output[0].top_k(5) {
        println!("  class {class:>4}  {score:>10.4}");
    }
    print("load (parse + optimize)", summarize(&time_load(&bytes, 5)?));
    print("single-thread inference", summarize(&time_inference(&model, &input, 3, runs)?));
    Ok(())
}

fn print(what: &str, summary: Option<Summary>) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if let Some(s) = summary {
        println!(
            "{what}: n={} min {:.2} ms, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            s.count,
            ms(s.min),
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.max)
        );
    }
}
