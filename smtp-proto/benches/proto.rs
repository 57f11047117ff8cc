//! Criterion benchmarks: command parsing and dot (un)stuffing throughput.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use smtp_proto::{Command, DotStuffer, DotUnstuffer, LineEndingPolicy};

/// A 1 MiB body of 76-character lines, a few starting with a dot.
fn body() -> Vec<u8> {
    let mut v = Vec::with_capacity(1 << 20);
    let mut i = 0u32;
    while v.len() < (1 << 20) {
        if i % 50 == 0 {
            v.push(b'.');
        }
        v.extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod te");
        v.extend_from_slice(b"\r\n");
        i += 1;
    }
    v
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for line in [
        &b"MAIL FROM:<sender.name@example.org> SIZE=102400 BODY=8BITMIME"[..],
        b"RCPT TO:<recipient@example.net> NOTIFY=FAILURE,DELAY",
    ] {
        g.bench_with_input(BenchmarkId::from_parameter(String::from_utf8_lossy(&line[..4])), line, |b, l| {
            b.iter(|| Command::parse(black_box(l)).unwrap())
        });
    }
    g.finish();
}

fn dots(c: &mut Criterion) {
    let body = body();
    let stuffed = DotStuffer::stuff_all(&body);
    let mut g = c.benchmark_group("dots");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("stuff_1MiB", |b| {
        let mut out = Vec::with_capacity(stuffed.len());
        b.iter(|| {
            out.clear();
            let mut s = DotStuffer::new();
            s.stuff(black_box(&body), &mut out);
            s.finish(&mut out);
        })
    });
    g.bench_function("unstuff_1MiB", |b| {
        let mut out = Vec::with_capacity(stuffed.len());
        b.iter(|| {
            out.clear();
            let mut u = DotUnstuffer::new(LineEndingPolicy::Reject);
            black_box(u.unstuff(black_box(&stuffed), &mut out))
        })
    });
    g.finish();
}

criterion_group!(benches, parse, dots);
criterion_main!(benches);
