//! DiLoCo quality on the bundled corpus: W replicas × H inner steps × R
//! rounds, against one replica trained on the same tokens at W× the batch.
//!
//! ```text
//! cargo run --release -p p2ptrain-trainer --example diloco -- baseline
//! cargo run --release -p p2ptrain-trainer --example diloco -- diloco [--density 0.01 --bits 8 --chunk 4096]
//!     [--workers 4] [--inner-steps 50] [--rounds 10] [--outer-lr 0.7] [--outer-momentum 0.9] [--batch 32]
//!     [--eval-every 1] [--ef-decay 1.0]
//! ```
//!
//! The setup of the PyTorch reference (`chargpt_diloco.py diloco`): tiny
//! model, each worker on its own contiguous quarter of the training text,
//! AdamW 1e-3 with 20 warm-up steps and cosine decay to 10%, outer Nesterov
//! 0.7 / 0.9, validation loss (nats per byte) over 64 fixed batches of 32×64.
//! With `--density`, each pseudo-gradient goes through the kernels'
//! compression (chunked top-k, quantized, with error feedback) before
//! averaging; without it, the exact mean is used.
//! `scripts/diloco-quality.sh` runs the table.

use p2ptrain_kernels::{aggregate, compress, AggregateInput};
use p2ptrain_protocol::{CompressionSettings, Digest, RunManifest, ValueBits};
use p2ptrain_trainer::optim::{pseudo_gradient, OuterNesterov};
use p2ptrain_trainer::{device, Batch, Corpus, LocalTrainer, ParamLayout, Preset, Sampler};

type Error = Box<dyn std::error::Error>;

/// DiLoCo quality on the bundled corpus, against one replica trained on the
/// same tokens at W× the batch.
#[derive(clap::Parser)]
#[command(args_override_self = true)]
struct Args {
    /// `baseline`: one replica at W× the batch; `diloco`: W replicas and
    /// the outer step.
    mode: Mode,
    /// Compress each pseudo-gradient: top-k at this density (0 to 1), with
    /// error feedback. Without it the exact mean is used.
    #[arg(long)]
    density: Option<f32>,
    /// Entries per compression chunk.
    #[arg(long, default_value_t = 4096)]
    chunk: u32,
    /// Bits per kept value (2, 4 or 8).
    #[arg(long, default_value_t = 8)]
    bits: u8,
    /// Replicas (W).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Inner steps per round (H).
    #[arg(long, default_value_t = 50)]
    inner_steps: u64,
    /// Rounds (R).
    #[arg(long, default_value_t = 10)]
    rounds: u64,
    /// Sequences per inner step and replica.
    #[arg(long, default_value_t = 32)]
    batch: u32,
    /// Outer Nesterov learning rate.
    #[arg(long, default_value_t = 0.7)]
    outer_lr: f32,
    /// Outer Nesterov momentum.
    #[arg(long, default_value_t = 0.9)]
    outer_momentum: f32,
    /// Evaluate after every this many rounds (and after the last).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    eval_every: u64,
    /// Multiplies each worker's error-feedback residual after every round.
    #[arg(long, default_value_t = 1.0)]
    ef_decay: f32,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Baseline,
    Diloco,
}

struct Setup {
    workers: usize,
    inner_steps: u64,
    rounds: u64,
    batch: u32,
    outer_lr: f32,
    outer_momentum: f32,
    /// Evaluate after every this many rounds (and after the last).
    eval_every: u64,
    /// Multiplies each worker's error-feedback residual after every round
    /// (1 keeps all of it; SparseLoCo-style runs use less).
    ef_decay: f32,
    compression: Option<CompressionSettings>,
}

fn main() -> Result<(), Error> {
    p2ptrain_trainer::allocator::keep_freed_memory();
    let args: Args = clap::Parser::parse();
    let setup = Setup {
        workers: args.workers,
        inner_steps: args.inner_steps,
        rounds: args.rounds,
        batch: args.batch,
        outer_lr: args.outer_lr,
        outer_momentum: args.outer_momentum,
        eval_every: args.eval_every,
        ef_decay: args.ef_decay,
        compression: args
            .density
            .map(|density| -> Result<_, Error> {
                let settings = CompressionSettings {
                    chunk_len: args.chunk,
                    density,
                    value_bits: ValueBits::try_from(args.bits)?,
                };
                settings.validate()?;
                Ok(settings)
            })
            .transpose()?,
    };
    let corpus = Corpus::bundled();
    let context = Preset::Tiny.config().context_len as usize;
    let validation = corpus.validation_batches(64, 32, context, 1234)?;
    let (mode, final_loss) = match args.mode {
        Mode::Baseline => ("baseline", baseline(&setup, &corpus, &validation)?),
        Mode::Diloco => ("diloco", diloco(&setup, &corpus, &validation)?),
    };
    let density = args.density.map_or("none".to_owned(), |d| d.to_string());
    println!("RESULT mode={mode} density={density} final_val_loss={final_loss:.4}");
    Ok(())
}

fn evaluate(trainer: &LocalTrainer, validation: &[Batch]) -> Result<f32, Error> {
    let batches = validation
        .iter()
        .map(|b| (b.inputs.as_slice(), b.targets.as_slice()));
    Ok(trainer.evaluate(batches, 32)?)
}

fn trainer(batch: u32, total_steps: u64) -> Result<LocalTrainer, Error> {
    let config = Preset::Tiny.config();
    let mut inner = RunManifest::default().inner;
    inner.batch_size = batch;
    let values = ParamLayout::gpt2(&config).initial_values(0);
    Ok(LocalTrainer::new(
        config,
        values,
        inner,
        total_steps,
        &device::parse("cpu")?,
    )?)
}

fn baseline(setup: &Setup, corpus: &Corpus, validation: &[Batch]) -> Result<f32, Error> {
    let total = setup.inner_steps * setup.rounds;
    let batch = setup.batch * setup.workers as u32;
    let mut model = trainer(batch, total)?;
    let context = model.model().config().context_len as usize;
    // The same tokens as DiLoCo: each step takes one batch from every shard.
    let mut samplers = shard_samplers(corpus, setup.workers)?;
    println!(
        "baseline: {total} steps at batch {batch}; init val {:.4}",
        evaluate(&model, validation)?
    );
    let mut last = 0.0;
    for step in 0..total {
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for sampler in &mut samplers {
            let b = sampler.next_batch(setup.batch as usize, context)?;
            inputs.extend(b.inputs);
            targets.extend(b.targets);
        }
        model.step(&inputs, &targets)?;
        if (step + 1) % (setup.inner_steps * setup.eval_every) == 0 || step + 1 == total {
            last = evaluate(&model, validation)?;
            println!("  step {:4} val {last:.4}", step + 1);
        }
    }
    Ok(last)
}

fn shard_samplers(corpus: &Corpus, workers: usize) -> Result<Vec<Sampler>, Error> {
    (0..workers)
        .map(|k| Ok(Sampler::new(corpus.shard(k, workers)?, 100 + k as u64)))
        .collect()
}

fn diloco(setup: &Setup, corpus: &Corpus, validation: &[Batch]) -> Result<f32, Error> {
    let total = setup.inner_steps * setup.rounds;
    let mut workers = (0..setup.workers)
        .map(|_| trainer(setup.batch, total))
        .collect::<Result<Vec<_>, _>>()?;
    let context = workers[0].model().config().context_len as usize;
    let mut samplers = shard_samplers(corpus, setup.workers)?;
    let mut global = workers[0].params()?.to_vec();
    let n = global.len();
    let mut outer = OuterNesterov::new(setup.outer_lr, setup.outer_momentum, n);
    let mut residuals = vec![vec![0.0f32; n]; setup.workers];
    println!(
        "diloco: {} workers x H={} x {} rounds, batch {}, compression {:?}; init val {:.4}",
        setup.workers,
        setup.inner_steps,
        setup.rounds,
        setup.batch,
        setup.compression,
        evaluate(&workers[0], validation)?
    );
    let mut last = 0.0;
    for round in 0..setup.rounds {
        let mut deltas = Vec::with_capacity(setup.workers);
        for (worker, sampler) in workers.iter_mut().zip(&mut samplers) {
            for _ in 0..setup.inner_steps {
                let b = sampler.next_batch(setup.batch as usize, context)?;
                worker.step(&b.inputs, &b.targets)?;
            }
            deltas.push(pseudo_gradient(&global, &worker.params()?)?);
        }
        let (mean, bits) = match &setup.compression {
            None => {
                let mut mean = vec![0.0f32; n];
                for delta in &deltas {
                    for (m, d) in mean.iter_mut().zip(delta) {
                        *m += d / setup.workers as f32;
                    }
                }
                (mean, 32.0)
            }
            Some(settings) => {
                let payloads = deltas
                    .iter()
                    .zip(&mut residuals)
                    .map(|(delta, residual)| compress(delta, residual, settings))
                    .collect::<Result<Vec<_>, _>>()?;
                for residual in &mut residuals {
                    p2ptrain_kernels::decay_residual(residual, setup.ef_decay)?;
                }
                let inputs: Vec<_> = payloads
                    .iter()
                    .enumerate()
                    .map(|(k, payload)| AggregateInput {
                        key: Digest::of(&k.to_le_bytes()),
                        payload,
                        weight: 1.0,
                    })
                    .collect();
                (aggregate(&inputs)?, payloads[0].bits_per_param())
            }
        };
        outer.step(&mut global, &mean)?;
        for worker in &mut workers {
            worker.set_params(&global)?;
        }
        if (round + 1) % setup.eval_every == 0 || round + 1 == setup.rounds {
            last = evaluate(&workers[0], validation)?;
            println!(
                "  round {:3} val {last:.4}  bits/param {bits:.3}",
                round + 1
            );
        }
    }
    Ok(last)
}
