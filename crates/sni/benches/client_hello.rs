//! Micro-benchmark: reading 0.5 / 1.8 / 5.5 KB ClientHellos, in one read and split across records.
use meshgate_sni::synth::{refragment, HelloSpec};
use meshgate_sni::{HelloReader, Limits, Progress};

fn main() {
    divan::main();
}

fn hello(kb: &str) -> Vec<u8> {
    let spec = HelloSpec::new(Some(
        "api.default.dc2.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul",
    ))
    .alpn(&["h2", "http/1.1"]);
    let spec = match kb {
        "0.5" => spec.padding(260),
        "1.8" => spec.post_quantum().padding(300),
        _ => spec.post_quantum().padding(4000),
    };
    spec.build()
}

#[divan::bench(args = ["0.5", "1.8", "5.5"])]
fn one_read(bencher: divan::Bencher<'_, '_>, kb: &str) {
    let bytes = hello(kb);
    bencher
        .counter(divan::counter::BytesCount::new(bytes.len()))
        .bench(|| {
            let mut r = HelloReader::new(Limits::default());
            matches!(r.feed(divan::black_box(&bytes)), Ok(Progress::Done(_)))
        });
}

#[divan::bench(args = ["0.5", "1.8", "5.5"])]
fn split_records(bencher: divan::Bencher<'_, '_>, kb: &str) {
    let bytes = hello(kb);
    let split = refragment(&bytes, &[200, 200, 200]).expect("valid hello");
    bencher.bench(|| {
        let mut r = HelloReader::new(Limits::default());
        let (a, b) = split.split_at(split.len() / 2);
        let _ = r.feed(divan::black_box(a));
        matches!(r.feed(divan::black_box(b)), Ok(Progress::Done(_)))
    });
}
