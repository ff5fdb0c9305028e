//! Tests of the stream meter.

mod stream {
    use crate::extract::{extract, EventKind};
    use crate::meter::*;
    use crate::tokens::Encoding;

    fn chat_chunk(text: &str) -> String {
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
            serde_json::to_string(text).unwrap()
        )
    }

    fn chat_stream(words: &[&str]) -> Vec<u8> {
        let mut s = String::new();
        for w in words {
            s.push_str(&chat_chunk(w));
        }
        s.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        s.push_str("data: [DONE]\n\n");
        s.into_bytes()
    }

    const WORDS: &[&str] = &[
        "Hello", ",", " world", "!", " How", " are", " you", " today", "?", " 🙂",
    ];

    fn run(meter: &mut StreamMeter, bytes: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            let r = meter.feed(c);
            out.extend(r.forward.to_vec(c));
        }
        if let Forward::Bytes(b) = meter.close().forward {
            out.extend(b);
        }
        out
    }

    #[test]
    fn passes_bytes_through_exactly_and_counts_exactly() {
        let bytes = chat_stream(WORDS);
        let text: String = WORDS.concat();
        for chunk in [1, 2, 3, 7, 64, bytes.len()] {
            let mut m = StreamMeter::new(MeterConfig {
                model: Some("gpt-4o".into()),
                ..Default::default()
            });
            let out = run(&mut m, &bytes, chunk);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&bytes),
                "chunk size {chunk}"
            );
            assert_eq!(
                m.completion_tokens(),
                Encoding::O200kBase.count(&text) as u64
            );
            assert_eq!(m.state(), MeterState::Finished);
            assert_eq!(m.format(), Some(Format::OpenAiChat));
            assert_eq!(m.finish_reasons(), [(0, "stop".to_string())]);
            assert!(m.anomalies().is_empty());
        }
    }

    #[test]
    fn whole_chunk_forwarded_without_copy() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig::default());
        assert_eq!(m.feed(&bytes).forward, Forward::Input);
    }

    #[test]
    fn limit_cuts_before_the_crossing_event_with_graceful_ending() {
        let bytes = chat_stream(WORDS);
        for limit in 0..12u64 {
            for chunk in [1, 5, bytes.len()] {
                let mut m = StreamMeter::new(MeterConfig {
                    model: Some("gpt-4o".into()),
                    limit: Some(limit),
                    prompt_tokens: Some(3),
                    ..Default::default()
                });
                let out = run(&mut m, &bytes, chunk);
                let events = SseDecoder::default().feed_owned(&out).unwrap();
                // Delivered text never exceeds the limit, and is the longest prefix that fits.
                let mut delivered = String::new();
                for e in &events {
                    if let Ok(ex) = extract(Format::OpenAiChat, b"", e.data.as_bytes()) {
                        for d in ex.deltas {
                            delivered.push_str(&d.text);
                        }
                    }
                }
                let n = Encoding::O200kBase.count(&delivered) as u64;
                assert!(n <= limit, "limit {limit}: delivered {n}");
                assert_eq!(m.completion_tokens(), n);
                let full: String = WORDS.concat();
                if Encoding::O200kBase.count(&full) as u64 > limit {
                    assert_eq!(m.state(), MeterState::Truncated);
                    let k = delivered.len();
                    let next_word = WORDS
                        .iter()
                        .scan(0, |acc, w| {
                            *acc += w.len();
                            Some(*acc)
                        })
                        .position(|e| e > k)
                        .unwrap();
                    let mut with_next = delivered.clone();
                    with_next.push_str(WORDS[next_word]);
                    assert!(
                        Encoding::O200kBase.count(&with_next) as u64 > limit,
                        "cut too early at limit {limit}"
                    );
                    let last = events.last().unwrap();
                    assert_eq!(last.data, "[DONE]");
                    let fin = &events[events.len() - 2];
                    assert!(
                        fin.data.contains("\"finish_reason\":\"length\""),
                        "{}",
                        fin.data
                    );
                    assert!(fin.data.contains(&format!("\"completion_tokens\":{n}")));
                    assert!(fin.data.contains("\"id\":\"c1\""));
                } else {
                    assert_eq!(
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&bytes)
                    );
                }
            }
        }
    }

    #[test]
    fn shadow_never_cuts_but_reports() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig {
            limit: Some(3),
            shadow: true,
            ..Default::default()
        });
        let out = run(&mut m, &bytes, 9);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(m.would_truncate_at(), Some(3));
        assert_eq!(m.state(), MeterState::Finished);
    }

    #[test]
    fn an_observed_cap_beside_an_enforced_one_reports_and_the_enforced_one_cuts() {
        let bytes = chat_stream(WORDS);
        let cut_alone = {
            let mut m = StreamMeter::new(MeterConfig {
                limit: Some(5),
                ..Default::default()
            });
            run(&mut m, &bytes, 9)
        };
        let mut m = StreamMeter::new(MeterConfig {
            limit: Some(5),
            shadow_limit: Some(3),
            ..Default::default()
        });
        let out = run(&mut m, &bytes, 9);
        // The observed cap changes nothing on the wire: the same bytes as the limit alone.
        assert_eq!(out, cut_alone);
        assert_eq!(m.would_truncate_at(), Some(3));
        assert_eq!(m.state(), MeterState::Truncated);
        assert_eq!(m.completion_tokens(), 5);
        // An observed cap above the enforced one is never reached.
        let mut m = StreamMeter::new(MeterConfig {
            limit: Some(3),
            shadow_limit: Some(5),
            ..Default::default()
        });
        run(&mut m, &bytes, 9);
        assert_eq!(m.would_truncate_at(), None);
        assert_eq!(m.completion_tokens(), 3);
    }

    /// Issue 19 #5: on a 5-token cap, ten chunks with an unusable `usage` all went through
    /// and the meter counted 0. Forwarded text is counted, always.
    #[test]
    fn unusable_billed_fields_never_switch_counting_off() {
        let mut bytes = Vec::new();
        let chunk = br#"data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" Hello","refusal":1}}],"usage":[1]}

"#;
        for _ in 0..10 {
            bytes.extend_from_slice(chunk);
        }
        bytes.extend(b"data: [DONE]\n\n");
        let mut m = StreamMeter::new(MeterConfig {
            limit: Some(5),
            ..Default::default()
        });
        run(&mut m, &bytes, 7);
        assert_eq!(m.completion_tokens(), 5);
        assert_eq!(m.state(), MeterState::Truncated);
        let kinds: Vec<_> = m.anomalies().iter().map(|a| a.kind).collect();
        assert_eq!(kinds, vec![AnomalyKind::UnusableField]);
    }

    #[test]
    fn credit_pauses_and_grant_resumes_exactly() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig {
            credit: Some(2),
            ..Default::default()
        });
        let mut out = Vec::new();
        let mut pauses = 0;
        for c in bytes.chunks(13) {
            let r = m.feed(c);
            out.extend(r.forward.to_vec(c));
            let mut paused = r.paused;
            while paused || m.state() == MeterState::Paused {
                pauses += 1;
                assert!(m.completion_tokens() <= m.credit().unwrap());
                let r = m.grant(1);
                out.extend(r.forward.to_vec(&[]));
                paused = r.paused;
            }
        }
        out.extend(m.close().forward.to_vec(&[]));
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&bytes)
        );
        assert!(pauses > 3);
        assert_eq!(m.state(), MeterState::Finished);
    }

    #[test]
    fn close_while_paused_then_grant_flushes() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig {
            credit: Some(1),
            ..Default::default()
        });
        let mut out = m.feed(&bytes).forward.to_vec(&bytes);
        assert_eq!(m.state(), MeterState::Paused);
        assert!(matches!(m.close().forward, Forward::Bytes(ref b) if b.is_empty()));
        out.extend(m.grant(1000).forward.to_vec(&[]));
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&bytes)
        );
    }

    #[test]
    fn truncate_while_paused_sends_ending() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig {
            credit: Some(1),
            ..Default::default()
        });
        let mut out = m.feed(&bytes).forward.to_vec(&bytes);
        out.extend(m.truncate("budget exhausted"));
        let s = String::from_utf8(out).unwrap();
        assert!(s.ends_with("data: [DONE]\n\n"));
        assert!(s.contains("\"finish_reason\":\"length\""));
        assert_eq!(m.state(), MeterState::Truncated);
        assert!(m.feed(b"data: x\n\n").forward.to_vec(&[]).is_empty());
    }

    #[test]
    fn malformed_event_is_forwarded_and_reported() {
        let bytes = b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[]}\n\ndata: {oops\n\ndata: [DONE]\n\n";
        let mut m = StreamMeter::new(MeterConfig::default());
        let r = m.feed(bytes);
        assert_eq!(r.forward, Forward::Input);
        assert_eq!(r.anomalies.len(), 1);
        assert_eq!(r.anomalies[0].kind, AnomalyKind::MalformedJson);
        assert_eq!(r.anomalies[0].offset, 55);
        assert_eq!(m.state(), MeterState::Finished);
    }

    #[test]
    fn upstream_reset_mid_event_gets_clean_error_ending() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig::default());
        let cut = bytes.len() / 2;
        let mut out = m.feed(&bytes[..cut]).forward.to_vec(&bytes[..cut]);
        out.extend(m.fail("api_error", "upstream_error", "upstream connection reset"));
        let events = SseDecoder::default().feed_owned(&out).unwrap();
        // Only whole events went out, then the error chunk and [DONE].
        assert!(events[events.len() - 2].data.starts_with("{\"error\""));
        assert_eq!(events.last().unwrap().data, "[DONE]");
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains("\n\n\n"));
        assert_eq!(m.state(), MeterState::Failed);
    }

    #[test]
    fn anthropic_stream_counts_blocks_and_truncates_with_block_stop() {
        let mut s = String::new();
        s.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n");
        s.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        for w in WORDS {
            s.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n", serde_json::to_string(w).unwrap()));
        }
        s.push_str(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        s.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":12}}\n\n");
        s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        let bytes = s.into_bytes();
        let mut m = StreamMeter::new(MeterConfig::default());
        assert_eq!(run(&mut m, &bytes, 11), bytes);
        assert_eq!(m.format(), Some(Format::Anthropic));
        assert_eq!(m.usage().unwrap().output_tokens, Some(12));
        assert_eq!(m.usage().unwrap().input_tokens, Some(9));
        assert_eq!(m.encoding(), (Encoding::O200kBase, Provenance::Estimated));

        let mut m = StreamMeter::new(MeterConfig {
            limit: Some(3),
            ..Default::default()
        });
        let out = String::from_utf8(run(&mut m, &bytes, 11)).unwrap();
        assert!(
            out.contains(
                "event: content_block_stop\ndata: {\"index\":0,\"type\":\"content_block_stop\"}"
            ) || out.contains("\"type\":\"content_block_stop\"")
        );
        assert!(out.contains("\"stop_reason\":\"max_tokens\""));
        assert!(out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        assert_eq!(m.state(), MeterState::Truncated);
    }

    fn with_include_usage(words: &[&str]) -> Vec<u8> {
        let mut s = String::new();
        for w in words {
            s.push_str(&format!(
                "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}],\"usage\":null}}\n\n",
                serde_json::to_string(w).unwrap()
            ));
        }
        s.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":9,\"total_tokens\":12}}\n\n");
        s.push_str("data: [DONE]\n\n");
        s.into_bytes()
    }

    #[test]
    fn strip_usage_removes_nulls_and_the_usage_chunk_but_keeps_the_reading() {
        let bytes = with_include_usage(WORDS);
        for chunk in [1, 7, bytes.len()] {
            let mut m = StreamMeter::new(MeterConfig {
                strip_usage: true,
                ..Default::default()
            });
            let out = String::from_utf8(run(&mut m, &bytes, chunk)).unwrap();
            assert!(!out.contains("usage"), "{out}");
            assert_eq!(out.matches("data: ").count(), WORDS.len() + 1);
            assert!(out.ends_with("data: [DONE]\n\n"));
            assert_eq!(m.usage().unwrap().output_tokens, Some(9));
            for ev in SseDecoder::default().feed_owned(out.as_bytes()).unwrap() {
                if ev.data != "[DONE]" {
                    let _: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
                }
            }
        }
    }

    #[test]
    fn partial_usage_is_added_to_every_event() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig {
            partial_usage: true,
            prompt_tokens: Some(5),
            ..Default::default()
        });
        let out = run(&mut m, &bytes, 13);
        let mut so_far = String::new();
        for ev in SseDecoder::default().feed_owned(&out).unwrap() {
            if ev.data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                so_far.push_str(t);
            }
            let n = Encoding::O200kBase.count(&so_far) as u64;
            assert_eq!(v["usage"]["completion_tokens"], n);
            assert_eq!(v["usage"]["total_tokens"], n + 5);
        }
        // The upstream's own final usage is never replaced.
        let bytes = with_include_usage(WORDS);
        let mut m = StreamMeter::new(MeterConfig {
            partial_usage: true,
            ..Default::default()
        });
        let out = String::from_utf8(run(&mut m, &bytes, 64)).unwrap();
        assert!(out.contains(
            "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":9,\"total_tokens\":12}"
        ));
        assert!(!out.contains("\"usage\":null"));
    }

    #[test]
    fn oversized_event_fails_the_stream() {
        let mut m = StreamMeter::new(MeterConfig {
            max_event_size: 64,
            ..Default::default()
        });
        let big = format!("data: {}\n\n", "x".repeat(100));
        let r = m.feed(big.as_bytes());
        assert_eq!(m.state(), MeterState::Failed);
        assert_eq!(r.anomalies[0].kind, AnomalyKind::EventTooLarge);
        // Nothing of the oversized event goes out, only the error ending.
        let out = String::from_utf8(r.forward.to_vec(&[])).unwrap();
        assert!(!out.contains("xxx"));
        assert!(out.starts_with("data: {\"error\""), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert!(m.fail("api_error", "x", "y").is_empty(), "one ending only");
    }

    /// Issue 12 #5: every format ends with its error ending, after the whole events that came
    /// before the oversized one, whether or not the oversized event ever ends, however the
    /// stream is split.
    #[test]
    fn oversized_event_ends_with_the_formats_error_ending() {
        let head: [(Format, &str); 3] = [
            (Format::OpenAiChat, &chat_chunk("Hi")),
            (
                Format::Anthropic,
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n",
            ),
            (
                Format::OpenAiResponses,
                "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"r\",\"status\":\"in_progress\"}}\n\n",
            ),
        ];
        for (format, first) in head {
            for blank in [true, false] {
                for events_before in [0, 2] {
                    for split in [7, 1000, usize::MAX] {
                        let mut s = first.repeat(events_before).into_bytes();
                        let kept = s.len();
                        s.extend_from_slice(b"data: ");
                        s.extend(std::iter::repeat_n(b'x', 5000));
                        if blank {
                            s.extend_from_slice(b"\n\n");
                        }
                        let mut m = StreamMeter::new(MeterConfig {
                            format: Some(format),
                            max_event_size: 4096,
                            ..Default::default()
                        });
                        let mut out = Vec::new();
                        for c in s.chunks(split.min(s.len())) {
                            out.extend(m.feed(c).forward.to_vec(c));
                        }
                        out.extend(m.close().forward.to_vec(b""));
                        out.extend(m.fail("api_error", "upstream_error", "closed"));
                        assert_eq!(m.state(), MeterState::Failed);
                        assert_eq!(&out[..kept], &s[..kept], "{format:?}");
                        let events = SseDecoder::default().feed_owned(&out[kept..]).unwrap();
                        let last = events
                            .iter()
                            .rfind(|e| e.data != "[DONE]")
                            .expect("an error event");
                        let ex = crate::extract::extract(
                            format,
                            if last.event == "message" {
                                b""
                            } else {
                                last.event.as_bytes()
                            },
                            last.data.as_bytes(),
                        )
                        .unwrap();
                        assert_eq!(ex.kind, EventKind::Error, "{format:?} {blank} {split}");
                        assert!(!String::from_utf8_lossy(&out).contains("xxx"));
                    }
                }
            }
        }
    }

    /// Issue 12 #6: an upstream that closes inside an event (here 1 MiB of `data:` lines, and
    /// a half line) gets its error ending on a clean block boundary: the partial block is
    /// dropped, so a client parses exactly the whole events, then the error ending.
    #[test]
    fn error_ending_after_an_unfinished_event_is_not_glued_to_it() {
        for partial in [
            "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"".to_string(),
            "data: x\n".repeat(1 << 17),
            "data: x\r\ndata: y\r".to_string(),
            ": comment without line end".to_string(),
        ] {
            let whole = chat_stream(&["Hello", " world"]);
            let whole = &whole[..whole.len() - "data: [DONE]\n\n".len()];
            let mut s = whole.to_vec();
            s.extend_from_slice(partial.as_bytes());
            let mut m = StreamMeter::new(MeterConfig::default());
            let out = run(&mut m, &s, 4096);
            assert_eq!(out, whole, "the unfinished block is not forwarded");
            assert_eq!(m.anomalies()[0].kind, AnomalyKind::IncompleteEvent);
            let mut out = out;
            out.extend(m.fail("api_error", "upstream_error", "closed mid-event"));
            let events = SseDecoder::default().feed_owned(&out).unwrap();
            let n = events.len();
            assert_eq!(events[n - 1].data, "[DONE]");
            let err: serde_json::Value = serde_json::from_str(&events[n - 2].data).unwrap();
            assert_eq!(err["error"]["code"], "upstream_error");
            for e in &events[..n - 2] {
                serde_json::from_str::<serde_json::Value>(&e.data).unwrap();
            }
        }
    }
}

mod budget_tests {
    use crate::meter::*;

    /// Issue 12 #9: over the shared budget, the stream holding the most ends with its
    /// format's error ending at its next read; the others go on.
    #[test]
    fn over_the_budget_the_largest_stream_ends_with_an_error() {
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(1 << 20)));
        let new = || {
            StreamMeter::new(MeterConfig {
                format: Some(Format::OpenAiChat),
                budget,
                ..Default::default()
            })
        };
        let (mut big, mut small) = (new(), new());
        let mut partial = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
        partial.extend(std::iter::repeat_n(b'x', 700 << 10));
        assert!(big.feed(&partial).forward.to_vec(&partial).is_empty());
        assert_eq!(big.state(), MeterState::Streaming);
        // Held once: the raw bytes to forward, which the decoder reads its values from.
        assert!(
            big.held_bytes() < (700 << 10) + (1 << 10),
            "{}",
            big.held_bytes()
        );
        let r = small.feed(&partial[..350 << 10]);
        assert!(r.forward.to_vec(&[]).is_empty());
        assert_eq!(
            small.state(),
            MeterState::Streaming,
            "the reporter is not the largest"
        );
        // The largest stream ends at its next read, with an error ending and nothing of the
        // unfinished event.
        let r = big.feed(b"xx");
        let out = String::from_utf8(r.forward.to_vec(b"xx")).unwrap();
        assert!(out.starts_with("data: {\"error\""), "{out}");
        assert!(out.contains("pending_budget_exceeded"));
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(big.state(), MeterState::Failed);
        assert_eq!(r.anomalies[0].kind, AnomalyKind::PendingBudgetExceeded);
        assert!(big.held_bytes() < 1024);
        assert!(budget.total() < 1 << 20);
        // The other stream finishes normally.
        let mut rest = partial[350 << 10..].to_vec();
        rest.extend_from_slice(b"\"}}]}\n\ndata: [DONE]\n\n");
        small.feed(&rest);
        assert_eq!(small.state(), MeterState::Finished);
        assert!(small.held_bytes() <= 2 * KEEP_CAPACITY as u64);
        drop((big, small));
        assert_eq!(budget.total(), 0);
    }
    /// Issue 12 #9: a stream holding one unfinished event near the size limit holds it once
    /// (the raw bytes it will forward, which the decoder reads its values from), not once as
    /// raw bytes and again as the decoder's data: what it reports to the budget stays near 1x
    /// the limit, for one long data line as for many short ones, and the event still goes out
    /// whole and metered when it ends.
    #[test]
    fn an_unfinished_event_near_the_limit_is_held_once() {
        let cap = 4 << 20;
        let read = 64 << 10;
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(0)));
        let head = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"";
        let long = format!("{head}{}\"}}}}]}}\n", "x".repeat(cap - 200));
        // The same JSON spread over many data lines (joined with LF, which JSON allows
        // between its tokens).
        let line = format!("data: {}\n", "1,".repeat(500));
        let many = format!(
            "{head}hi\"}}}}],\"pad\":[\n{}data: 1]}}\n",
            line.repeat((cap - 200) / line.len())
        );
        for body in [long, many] {
            let mut m = StreamMeter::new(MeterConfig {
                format: Some(Format::OpenAiChat),
                max_event_size: cap,
                budget,
                ..Default::default()
            });
            let mut out = Vec::new();
            for c in body.as_bytes().chunks(read) {
                out.extend(m.feed(c).forward.to_vec(c));
            }
            assert!(out.is_empty());
            assert_eq!(m.state(), MeterState::Streaming);
            assert_eq!(m.pending_bytes(), body.len());
            let held = budget.total();
            assert_eq!(held, m.held_bytes());
            assert!(
                held <= (cap + read) as u64 && (held as f64) < 1.05 * body.len() as f64,
                "{held} bytes held for an unfinished event of {}",
                body.len()
            );
            let r = m.feed(b"\n");
            out.extend(r.forward.to_vec(b"\n"));
            assert_eq!(out.len(), body.len() + 1, "the event goes out whole");
            assert!(m.completion_tokens() > 0);
            assert!(m.held_bytes() <= KEEP_CAPACITY as u64);
        }
    }
}

mod schema_deviation_tests {
    //! Issue 12 #7: unbilled fields of another type than the schema's (a float `created`, a
    //! numeric `id`, extra members, objects where strings were expected) must not make events
    //! "malformed": the billed text and usage are read whatever those fields look like.
    use crate::meter::*;

    fn ev(event: &str, data: &str) -> String {
        let head = if event.is_empty() {
            String::new()
        } else {
            format!("event: {event}\n")
        };
        format!("{head}data: {data}\n\n")
    }

    const TEXTS: &[&str] = &[" one", " two", " three", " four", " five", " six", " seven"];

    /// A stream of `format` carrying `TEXTS`, its unbilled fields clean or deviant.
    fn stream(format: Format, deviant: bool) -> String {
        let j = |t: &str| serde_json::to_string(t).unwrap();
        let mut s = String::new();
        match format {
            Format::OpenAiChat | Format::OpenAiCompletions => {
                let head = if deviant {
                    r#""id":12345,"object":{"x":1},"created":1700000000.25,"model":["gpt-4o"],"system_fingerprint":7,"extra":{"deep":[1,2,{"a":null}]},"#
                } else {
                    r#""id":"c1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o","#
                };
                let (idx, fin) = if deviant {
                    (
                        r#""index":0.0"#,
                        r#""finish_reason":false,"logprobs":"none""#,
                    )
                } else {
                    (r#""index":0"#, r#""finish_reason":null"#)
                };
                for t in TEXTS {
                    let body = if format == Format::OpenAiChat {
                        format!(r#""delta":{{"content":{}}}"#, j(t))
                    } else {
                        format!(r#""text":{}"#, j(t))
                    };
                    s += &ev(
                        "",
                        &format!("{{{head}\"choices\":[{{{idx},{body},{fin}}}]}}"),
                    );
                }
                let usage =
                    r#""usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}"#;
                s += &ev("", &format!("{{{head}\"choices\":[],{usage}}}"));
                s += &ev("", "[DONE]");
            }
            Format::Anthropic => {
                let (id, model, extra) = if deviant {
                    (
                        "42",
                        "{\"name\":\"claude\"}",
                        ",\"created\":1.5,\"extra\":[true]",
                    )
                } else {
                    ("\"msg_1\"", "\"claude-x\"", "")
                };
                s += &ev(
                    "message_start",
                    &format!(
                        r#"{{"type":"message_start","message":{{"id":{id},"model":{model},"usage":{{"input_tokens":3,"output_tokens":1}}{extra}}}{extra}}}"#
                    ),
                );
                let index = if deviant { "\"0\"" } else { "0" };
                for t in TEXTS {
                    s += &ev(
                        "content_block_delta",
                        &format!(
                            r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"text_delta","text":{}{extra}}}{extra}}}"#,
                            j(t)
                        ),
                    );
                }
                let stop = if deviant { "{\"r\":1}" } else { "\"end_turn\"" };
                s += &ev(
                    "message_delta",
                    &format!(
                        r#"{{"type":"message_delta","delta":{{"stop_reason":{stop}}},"usage":{{"output_tokens":7}}{extra}}}"#
                    ),
                );
                s += &ev("message_stop", r#"{"type":"message_stop"}"#);
            }
            Format::OpenAiResponses => {
                let (id, created, seq_of, extra) = if deviant {
                    ("7", "1.7e9", "\"seq\"", ",\"extra\":{\"a\":[1.5]}")
                } else {
                    ("\"resp_1\"", "1700000000", "", "")
                };
                let seq = |n: usize| {
                    if seq_of.is_empty() {
                        n.to_string()
                    } else {
                        seq_of.to_string()
                    }
                };
                s += &ev(
                    "response.created",
                    &format!(
                        r#"{{"type":"response.created","sequence_number":{},"response":{{"id":{id},"model":"gpt-4o","created_at":{created},"status":"in_progress","usage":null{extra}}}{extra}}}"#,
                        seq(0)
                    ),
                );
                let out_index = if deviant { "\"0\"" } else { "0" };
                for (i, t) in TEXTS.iter().enumerate() {
                    s += &ev(
                        "response.output_text.delta",
                        &format!(
                            r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":5,"output_index":{out_index},"content_index":0,"delta":{}{extra}}}"#,
                            seq(i + 1),
                            j(t)
                        ),
                    );
                }
                s += &ev(
                    "response.completed",
                    &format!(
                        r#"{{"type":"response.completed","sequence_number":{},"response":{{"id":{id},"created_at":{created},"status":"completed","usage":{{"input_tokens":3,"output_tokens":7,"total_tokens":10}}{extra}}}}}"#,
                        seq(9)
                    ),
                );
            }
        }
        s
    }

    fn meter(format: Format, limit: Option<u64>) -> StreamMeter {
        StreamMeter::new(MeterConfig {
            format: Some(format),
            model: Some("gpt-4o".into()),
            limit,
            ..Default::default()
        })
    }

    #[test]
    fn deviant_unbilled_fields_are_metered_like_a_clean_stream() {
        for format in Format::ALL {
            let clean = stream(format, false);
            let deviant = stream(format, true);
            assert_ne!(clean, deviant);
            for split in [1, 13, usize::MAX] {
                let mut readings = Vec::new();
                for s in [&clean, &deviant] {
                    let mut m = meter(format, None);
                    for c in s.as_bytes().chunks(split.min(s.len())) {
                        m.feed(c);
                    }
                    m.close();
                    assert!(m.anomalies().is_empty(), "{format:?}: {:?}", m.anomalies());
                    readings.push((
                        m.completion_tokens(),
                        m.usage().map(|u| (u.input_tokens, u.output_tokens)),
                        m.state(),
                    ));
                }
                assert_eq!(readings[0], readings[1], "{format:?} split {split}");
                assert_eq!(readings[0].0, 7, "{format:?}");
            }
        }
    }

    #[test]
    fn deviant_unbilled_fields_do_not_lift_the_limit() {
        for format in Format::ALL {
            for deviant in [false, true] {
                let s = stream(format, deviant);
                let mut m = meter(format, Some(5));
                let mut out = Vec::new();
                for c in s.as_bytes().chunks(17) {
                    out.extend(m.feed(c).forward.to_vec(c));
                }
                assert_eq!(m.state(), MeterState::Truncated, "{format:?} {deviant}");
                assert_eq!(m.completion_tokens(), 5, "{format:?} {deviant}");
                // What went out parses, and carries exactly five words.
                let text = String::from_utf8(out).unwrap();
                let words = TEXTS.iter().filter(|t| text.contains(&j_esc(t))).count();
                assert_eq!(words, 5, "{format:?} {deviant}");
            }
        }
    }

    fn j_esc(t: &str) -> String {
        serde_json::to_string(t).unwrap()
    }
}

mod template_path_tests {
    use crate::meter::*;

    fn meter(format: Format, limit: Option<u64>, credit: Option<u64>) -> StreamMeter {
        StreamMeter::new(MeterConfig {
            format: Some(format),
            model: Some("gpt-4o".into()),
            limit,
            credit,
            ..Default::default()
        })
    }

    fn ev(event: &str, data: &str) -> String {
        let head = if event.is_empty() {
            String::new()
        } else {
            format!("event: {event}\n")
        };
        format!("{head}data: {data}\n\n")
    }

    /// The meter reads repeated-shape events through its template only when nothing but
    /// counting is asked of it; a limit that is never reached forces the general path. Both
    /// must agree on everything the meter reports, and on every synthetic ending.
    #[test]
    fn template_fast_path_agrees_with_the_general_path() {
        let texts = [
            "Hi", " there", "\n", "\"q\"", "東京", "🙂", "", "a\\b", " x", "y", "'s", "end",
        ];
        let j = |t: &str| serde_json::to_string(t).unwrap();
        let mut streams = Vec::new();
        let base = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"gpt-4o","choices":[{"index":0,"delta":"#;
        let mut s = ev(
            "",
            &format!(
                "{base}{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}"
            ),
        );
        for t in texts {
            s += &ev(
                "",
                &format!("{base}{{\"content\":{}}},\"finish_reason\":null}}]}}", j(t)),
            );
            s += &ev(
                "",
                &format!(
                    "{base}{{\"reasoning_content\":{}}},\"finish_reason\":null}}]}}",
                    j(t)
                ),
            );
        }
        s += &ev("", &format!("{base}{{}},\"finish_reason\":\"stop\"}}]}}"));
        s += &ev("", "[DONE]");
        streams.push((Format::OpenAiChat, s));
        // Usage asked for: `"usage":null` in every chunk, then the usage chunk.
        let mut s = String::new();
        for t in texts {
            s += &ev(
                "",
                &format!(
                    "{base}{{\"content\":{}}},\"finish_reason\":null}}],\"usage\":null}}",
                    j(t)
                ),
            );
        }
        s += &ev(
            "",
            r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":9,"total_tokens":11}}"#,
        );
        s += &ev("", "[DONE]");
        streams.push((Format::OpenAiChat, s));
        let mut s = ev(
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":3,"output_tokens":1}}}"#,
        );
        for (i, t) in texts.iter().enumerate() {
            s += &ev(
                "content_block_delta",
                &format!(
                    r#"{{"type":"content_block_delta","index":{},"delta":{{"type":"text_delta","text":{}}}}}"#,
                    i % 2,
                    j(t)
                ),
            );
            s += &ev("ping", r#"{"type": "ping"}"#);
        }
        s += &ev("message_stop", r#"{"type":"message_stop"}"#);
        streams.push((Format::Anthropic, s));
        let mut s = ev(
            "response.created",
            r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","model":"gpt-4o","created_at":1,"status":"in_progress","usage":null}}"#,
        );
        for (i, t) in texts.iter().enumerate() {
            s += &ev(
                "response.output_text.delta",
                &format!(
                    r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":"m","output_index":{},"content_index":0,"delta":{}}}"#,
                    i + 1,
                    i % 3,
                    j(t)
                ),
            );
        }
        streams.push((Format::OpenAiResponses, s));
        for (format, stream) in streams {
            for split in [1, 7, 64, stream.len()] {
                let run = |limit: Option<u64>, credit: Option<u64>| {
                    let mut m = meter(format, limit, credit);
                    let mut out = Vec::new();
                    for c in stream.as_bytes().chunks(split) {
                        let o = m.feed(c);
                        out.extend(o.forward.to_vec(c));
                        out.extend(format!("|{}|", m.completion_tokens()).bytes());
                    }
                    out.extend(m.close().forward.to_vec(b""));
                    let report = format!(
                        "{:?} {:?} {:?} {:?} {:?} {:?}",
                        m.tokens_by_channel(),
                        m.state(),
                        m.core.choices,
                        m.core.last_seq,
                        m.core.open_block,
                        m.core.anomalies
                    );
                    // The ending a cut would send now names the choices and sequence seen.
                    let ending = m.fail("api_error", "x", "y");
                    (out, report, String::from_utf8_lossy(&ending).into_owned())
                };
                let fast = run(None, None);
                let general = run(Some(u64::MAX), None);
                assert_eq!(fast, general, "{format:?} split {split}");
                // Under a credit the fast path takes what certainly fits; near the credit the
                // general path decides. A credit never reached agrees with the general path.
                let credited = run(None, Some(u64::MAX / 2));
                assert_eq!(credited, general, "{format:?} split {split} (credit)");
                // A credit that runs out pauses before the very event a limit of the same
                // size cuts at (the cut adds its ending after the same bytes).
                for cap in [1u64, 2, 3, 5, 8, 13] {
                    let stop = |limit: Option<u64>, credit: Option<u64>| {
                        let mut m = meter(format, limit, credit);
                        let mut out = Vec::new();
                        for c in stream.as_bytes().chunks(split) {
                            let o = m.feed(c);
                            out.extend(o.forward.to_vec(c));
                            if o.paused || o.truncated {
                                break;
                            }
                        }
                        (out, m.completion_tokens())
                    };
                    let (paused, paused_tokens) = stop(None, Some(cap));
                    let (cut, cut_tokens) = stop(Some(cap), None);
                    assert_eq!(
                        paused_tokens, cut_tokens,
                        "{format:?} split {split} cap {cap}"
                    );
                    assert!(
                        cut.starts_with(&paused),
                        "{format:?} split {split} cap {cap}"
                    );
                }
            }
        }
    }
}
