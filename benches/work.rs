//! Fixed workloads of the core, for A/B comparisons on a shared machine (workloads interleaved,
//! best of N rounds, so a neighbour's build hurts both sides alike) and for `perf record`:
//!
//! ```sh
//! cargo bench --bench work -- list
//! target/release/deps/work-* scan-openai walk-openai 9
//! ```
//!
//! The streams have the shapes `meterkit bench core` feeds (python/meterkit/synth.py, compact
//! JSON) and ~4-character deltas of a mixed corpus (English, code with newlines and quotes,
//! CJK, emoji), so escapes and non-ASCII text are part of the work.

use std::hint::black_box;
use std::time::Instant;

use meterkit_core::extract::{extract, extract_walk, Format};
use meterkit_core::meter::{MeterConfig, StreamMeter};
use meterkit_core::sse::{Flow, SseDecoder};
use meterkit_core::tokens::{Encoding, IncrementalCounter};

const PARTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog. It's 2026 and we'll meter every token.\n",
    "def handler(request):\n    return {\"status\": 200, \"body\": [1, 2, 3]}\n\n",
    "{\"id\": \"chatcmpl-1\", \"choices\": [{\"index\": 0, \"delta\": {\"content\": \"hi\"}}]}\n",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.\n",
    "Emoji 🙂👍🏽👨‍👩‍👧 and numbers 3.14159 1234567890   spaces\t\ttabs\n",
];

/// Deterministic deltas of 1 to 12 characters (~4 on average, about one token).
fn deltas(n: usize) -> Vec<String> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut text = String::new();
    let mut chars = 0;
    while chars < n * 13 {
        let part = PARTS[(next() % PARTS.len() as u64) as usize];
        text.push_str(part);
        chars += part.chars().count();
    }
    let chars: Vec<char> = text.chars().collect();
    let sizes = [1usize, 2, 3, 3, 4, 4, 5, 6, 8, 12];
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n {
        let k = sizes[(next() % sizes.len() as u64) as usize];
        out.push(chars[i..(i + k).min(chars.len())].iter().collect());
        i += k;
    }
    out
}

fn json(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn stream(format: Format, deltas: &[String]) -> Vec<String> {
    let mut ev = Vec::new();
    match format {
        Format::OpenAiChat => {
            let base = r#"{"id":"chatcmpl-meterkit0000000000000000001","object":"chat.completion.chunk","created":1731000000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_meterkit","choices":[{"index":0,"delta":"#;
            ev.push(format!("data: {base}{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"));
            for d in deltas {
                ev.push(format!(
                    "data: {base}{{\"content\":{}}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n",
                    json(d)
                ));
            }
            ev.push(format!(
                "data: {base}{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n"
            ));
            ev.push("data: [DONE]\n\n".into());
        }
        Format::Anthropic => {
            ev.push("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_meterkit0001\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-6\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n".into());
            ev.push("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".into());
            for d in deltas {
                ev.push(format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n", json(d)));
            }
            ev.push("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".into());
            ev.push(format!("event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{}}}}}\n\n", deltas.len()));
            ev.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into());
        }
        _ => {
            ev.push("event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_meterkit0001\",\"object\":\"response\",\"created_at\":1731000000,\"status\":\"in_progress\",\"model\":\"gpt-4o-2024-08-06\",\"output\":[],\"parallel_tool_calls\":true,\"tool_choice\":\"auto\",\"tools\":[],\"usage\":null}}\n\n".into());
            for (i, d) in deltas.iter().enumerate() {
                ev.push(format!("event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{},\"item_id\":\"msg_0001\",\"output_index\":0,\"content_index\":0,\"delta\":{},\"logprobs\":[]}}\n\n", i + 1, json(d)));
            }
            ev.push(format!("event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":{},\"response\":{{\"id\":\"resp_meterkit0001\",\"status\":\"completed\",\"usage\":null}}}}\n\n", deltas.len() + 1));
        }
    }
    ev
}

fn reads(events: &[String], per_read: usize) -> Vec<Vec<u8>> {
    events
        .chunks(per_read)
        .map(|c| c.concat().into_bytes())
        .collect()
}

fn frame_extract(bytes: &[u8], format: Format, walk_only: bool) -> usize {
    let mut d = SseDecoder::default();
    let mut n = 0usize;
    d.feed(bytes, |ev| {
        let ex = if walk_only {
            extract_walk(format, ev.event, ev.data)
        } else {
            extract(format, ev.event, ev.data)
        };
        n += ex.map_or(0, |e| e.deltas.len());
        Flow::Continue
    })
    .expect("framing");
    n
}

/// The meter as the binding drives it: feed one read, then read the exact count.
fn meter(chunks: &[Vec<u8>], format: Format) -> u64 {
    let mut m = StreamMeter::new(MeterConfig {
        format: Some(format),
        model: Some("gpt-4o".into()),
        ..Default::default()
    });
    for c in chunks {
        black_box(m.feed(c));
        black_box(m.completion_tokens());
    }
    m.close();
    m.completion_tokens()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rounds: usize = args.last().and_then(|s| s.parse().ok()).unwrap_or(5);
    let ds = deltas(20_000);
    let formats = [
        ("openai", Format::OpenAiChat),
        ("anthropic", Format::Anthropic),
        ("responses", Format::OpenAiResponses),
    ];
    let mut names = vec!["count-1".to_string(), "count-64".to_string()];
    for (f, _) in formats {
        names.push(format!("frame-{f}"));
        names.push(format!("scan-{f}"));
        names.push(format!("walk-{f}"));
        names.push(format!("meter-{f}-1"));
        names.push(format!("meter-{f}-64"));
        names.push(format!("meter-{f}-b1460"));
    }
    let chosen: Vec<&String> = args.iter().filter(|a| names.contains(a)).collect();
    if chosen.is_empty() {
        println!("workloads: {}", names.join(" "));
        println!("usage: work NAME... [ROUNDS]  (best of ROUNDS, workloads interleaved)");
        return;
    }
    let prepared: Vec<Prepared> = chosen.iter().map(|n| prepare(n, &formats)).collect();
    let mut best = vec![f64::INFINITY; chosen.len()];
    let mut per = vec![0usize; chosen.len()];
    for _ in 0..rounds {
        for (k, p) in prepared.iter().enumerate() {
            let (dt, n) = run(p, &ds);
            best[k] = best[k].min(dt);
            per[k] = n;
        }
    }
    for (k, name) in chosen.iter().enumerate() {
        println!(
            "{name:>20}: {:.3} us/event (best of {rounds}, {} events)",
            best[k] / per[k] as f64 * 1e6,
            per[k]
        );
    }
}

struct Prepared {
    kind: String,
    every: usize,
    format: Format,
    events: usize,
    bytes: Vec<u8>,
    chunks: Vec<Vec<u8>>,
}

fn prepare(name: &str, formats: &[(&str, Format)]) -> Prepared {
    let parts: Vec<&str> = name.split('-').collect();
    let format = formats
        .iter()
        .find(|(f, _)| parts.get(1) == Some(f))
        .map_or(Format::OpenAiChat, |f| f.1);
    let events = stream(format, &deltas(20_000));
    let per_read: usize = parts.get(2).and_then(|p| p.parse().ok()).unwrap_or(1);
    // `b1460`: reads of 1460 bytes (one TCP segment), so most events straddle two reads and
    // go through the meter's held bytes instead of being framed in the read.
    let chunks = match parts.get(2).and_then(|p| p.strip_prefix('b')) {
        Some(n) => events
            .concat()
            .into_bytes()
            .chunks(n.parse().expect("b<bytes>"))
            .map(<[u8]>::to_vec)
            .collect(),
        None => reads(&events, per_read),
    };
    Prepared {
        kind: parts[0].to_string(),
        every: parts.get(1).and_then(|p| p.parse().ok()).unwrap_or(1),
        format,
        events: events.len(),
        bytes: events.concat().into_bytes(),
        chunks,
    }
}

fn run(p: &Prepared, ds: &[String]) -> (f64, usize) {
    let t0 = Instant::now();
    match p.kind.as_str() {
        "count" => {
            let mut c = IncrementalCounter::new(Encoding::O200kBase);
            for (i, d) in ds.iter().enumerate() {
                c.push(d);
                if i % p.every == 0 {
                    black_box(c.count());
                }
            }
            black_box(c.count());
            return (t0.elapsed().as_secs_f64(), ds.len());
        }
        "scan" | "walk" => {
            black_box(frame_extract(&p.bytes, p.format, p.kind == "walk"));
        }
        "frame" => {
            let mut d = SseDecoder::default();
            let mut n = 0usize;
            d.feed(&p.bytes, |ev| {
                n += ev.data.len();
                Flow::Continue
            })
            .expect("framing");
            black_box(n);
        }
        _ => {
            black_box(meter(&p.chunks, p.format));
        }
    }
    (t0.elapsed().as_secs_f64(), p.events)
}
