//! Criterion benches of the pure-Rust core (no Python in the loop).
//!
//! `cargo bench --bench core` — reports time per stream; the per-event figures the README
//! quotes divide by the event count printed at start.
//! The Python-facing comparison against pure-Python baselines is `meterkit bench core`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meterkit_core::extract::{extract, Format};
use meterkit_core::meter::{MeterConfig, StreamMeter};
use meterkit_core::sse::{Flow, SseDecoder};
use meterkit_core::tokens::{Encoding, IncrementalCounter};

const WORDS: &[&str] = &[
    " The",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " the",
    " lazy",
    " dog",
    ".",
    "\n\n",
    "```python",
    "\n",
    "def",
    " f",
    "(x",
    "):",
    " return",
    " x",
    " *",
    " 2",
    "\n```",
    " 東京",
    "は",
    " 🙂",
];

fn openai_stream(events: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..events {
        let w = WORDS[i % WORDS.len()];
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-AbCdEf0123456789\",\"object\":\"chat.completion.chunk\",\"created\":1731000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_abc123\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n",
            serde_json::to_string(w).unwrap()
        ));
    }
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

fn anthropic_stream(events: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..events {
        let w = WORDS[i % WORDS.len()];
        s.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n",
            serde_json::to_string(w).unwrap()
        ));
    }
    s.into_bytes()
}

const N: usize = 2000;

fn framing_and_extraction(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing+extraction");
    for (name, format, bytes) in [
        ("openai", Format::OpenAiChat, openai_stream(N)),
        ("anthropic", Format::Anthropic, anthropic_stream(N)),
    ] {
        g.throughput(Throughput::Elements(N as u64));
        g.bench_with_input(BenchmarkId::new(name, N), &bytes, |b, bytes| {
            b.iter(|| {
                let mut d = SseDecoder::default();
                let mut deltas = 0usize;
                d.feed(bytes, |ev| {
                    if let Ok(ex) = extract(format, ev.event, ev.data) {
                        deltas += ex.deltas.len();
                    }
                    Flow::Continue
                })
                .unwrap();
                black_box(deltas)
            })
        });
    }
    g.finish();
}

fn meter_whole_pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("meter");
    let bytes = openai_stream(N);
    g.throughput(Throughput::Elements(N as u64));
    for (label, chunking) in [("one-read", bytes.len()), ("event-per-read", 0)] {
        g.bench_function(label, |b| {
            let chunks: Vec<&[u8]> = if chunking == 0 {
                bytes.split_inclusive(|&c| c == b'\n').collect()
            } else {
                vec![&bytes[..]]
            };
            b.iter(|| {
                let mut m = StreamMeter::new(MeterConfig {
                    model: Some("gpt-4o".into()),
                    ..Default::default()
                });
                for c in &chunks {
                    black_box(m.feed(c));
                }
                black_box(m.completion_tokens())
            })
        });
    }
    g.finish();
}

fn counting(c: &mut Criterion) {
    let text: String = (0..20_000).map(|i| WORDS[i % WORDS.len()]).collect();
    let mut g = c.benchmark_group("count");
    g.throughput(Throughput::Bytes(text.len() as u64));
    // LLM-sized deltas (1-12 chars, ~4 on average) of the same text.
    let sizes = [1usize, 2, 3, 3, 4, 4, 5, 6, 8, 12];
    let chars: Vec<char> = text.chars().collect();
    let mut deltas = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < chars.len() {
        let n = sizes[k % sizes.len()];
        deltas.push(
            chars[i..(i + n).min(chars.len())]
                .iter()
                .collect::<String>(),
        );
        i += n;
        k += 1;
    }
    for enc in Encoding::ALL {
        g.bench_function(format!("{}/one-shot", enc.name()), |b| {
            b.iter(|| black_box(enc.count(&text)))
        });
        g.bench_function(format!("{}/incremental", enc.name()), |b| {
            b.iter(|| {
                let mut c = IncrementalCounter::new(enc);
                for d in &deltas {
                    c.push(d);
                }
                black_box(c.count())
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    framing_and_extraction,
    meter_whole_pipeline,
    counting
);
criterion_main!(benches);
