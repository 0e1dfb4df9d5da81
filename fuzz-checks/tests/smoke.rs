//! The CI smoke of the fuzz targets, on the stable toolchain: every committed seed
//! (`fuzz/seeds/TARGET/`) through its target, then mutations of them for a bounded time per
//! target — byte flips, inserted and deleted runs, splices of two seeds, tokens of
//! `fuzz/json.dict` — from a fixed RNG seed, so a failure names an input that reproduces.
//! No coverage guidance (libFuzzer's long runs are `scripts/fuzz`, recorded in
//! RELIABILITY.md): this keeps the targets compiling and catches what a few thousand
//! nearby inputs find.
//!
//! `REDCELL_FUZZ_SMOKE_MS` sets the time per target (default 1,500 ms);
//! `REDCELL_FUZZ_SMOKE_SEED` the RNG seed (default 20261207).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = root().join("seeds").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// The dictionary's tokens (libFuzzer's format: one `"…"` per line, `\"`, `\\`, `\xNN`).
fn dictionary() -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(root().join("json.dict")).unwrap();
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let start = l.find('"')?;
            let quoted = l[start + 1..].strip_suffix('"')?;
            let mut out = Vec::new();
            let mut bytes = quoted.bytes();
            while let Some(b) = bytes.next() {
                if b != b'\\' {
                    out.push(b);
                    continue;
                }
                match bytes.next()? {
                    b'x' => {
                        let hex = [bytes.next()?, bytes.next()?];
                        out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
                    }
                    other => out.push(other),
                }
            }
            Some(out)
        })
        .collect()
}

fn mutate(rng: &mut StdRng, corpus: &[Vec<u8>], dict: &[Vec<u8>]) -> Vec<u8> {
    let mut data = corpus[rng.gen_range(0..corpus.len())].clone();
    for _ in 0..rng.gen_range(1..=4) {
        let at = rng.gen_range(0..=data.len());
        match rng.gen_range(0..6) {
            0 if !data.is_empty() => {
                let i = rng.gen_range(0..data.len());
                data[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => data.insert(at, rng.gen()),
            2 if at < data.len() => {
                let end = rng.gen_range(at..=data.len().min(at + 16));
                data.drain(at..end);
            }
            3 if !dict.is_empty() => {
                let token = &dict[rng.gen_range(0..dict.len())];
                data.splice(at..at, token.iter().copied());
            }
            4 => {
                let other = &corpus[rng.gen_range(0..corpus.len())];
                let from = rng.gen_range(0..=other.len());
                data.splice(at.., other[from..].iter().copied());
            }
            _ if at < data.len() => {
                // An interesting byte: a digit, a sign, a quote, a bracket, a high byte.
                const INTERESTING: &[u8] = b"0-9\"{}[]:,\xff\x00e.";
                data[at] = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            }
            _ => {}
        }
    }
    data
}

#[test]
fn every_target_holds_on_its_seeds_and_their_mutations() {
    let budget = Duration::from_millis(
        std::env::var("REDCELL_FUZZ_SMOKE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_500),
    );
    let seed: u64 = std::env::var("REDCELL_FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_261_207);
    let dict = dictionary();
    assert!(!dict.is_empty(), "fuzz/json.dict has no tokens");
    for &(name, check) in fuzz_checks::TARGETS {
        let corpus = seeds(name);
        assert!(!corpus.is_empty(), "no seeds for {name}");
        for input in &corpus {
            check(input);
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let started = Instant::now();
        let mut runs = 0u64;
        while started.elapsed() < budget {
            let input = mutate(&mut rng, &corpus, &dict);
            let outcome = std::panic::catch_unwind(|| check(&input));
            if outcome.is_err() {
                panic!(
                    "fuzz target {name} fails on mutation {runs} (REDCELL_FUZZ_SMOKE_SEED={seed}): {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
            runs += 1;
        }
        eprintln!("{name}: {} seeds, {runs} mutations", corpus.len());
    }
}
