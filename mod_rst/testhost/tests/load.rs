//! 200 simulated calls at once through mod_rst to a real udp_server. In its own
//! test binary so that it does not share the two cores with the other tests.

mod common;

use common::*;

#[test]
fn two_hundred_concurrent_calls() {
    const CALLS: u32 = 200;
    let receiver = ExternalReceiver::start();
    let conf = conf_for_addr(receiver.addr, &[]);
    let mut host = Host::start();
    host.load(conf.path());
    let calls: Vec<String> = (1000..1000 + CALLS).map(uuid).collect();
    for u in &calls {
        session(&mut host, u);
        host.ok(&format!("app {u} rst"));
    }
    for u in &calls {
        host.ok(&format!("media {u} 3 read_hz={READ_HZ} write_hz={WRITE_HZ}"));
    }
    host.ok("wait");
    for u in &calls {
        host.ok(&format!("hangup {u}"));
    }
    let summary = host.ok("summary");
    eprintln!("200 calls, callbacks: {}", summary["callbacks"]);
    let status = host.ok("api rst_status");
    eprintln!("rst_status: {}", status["output"]);
    let records = receiver.wait_records(CALLS as usize);
    let expected_r = heard("PCMU", &tone(READ_HZ, 8000.0, 8000, 0, 24000));
    let expected_w = heard("PCMU", &tone(WRITE_HZ, 8000.0, 8000, 0, 24000));
    for record in &records {
        assert_eq!(record["end_reason"], "bye", "{record}");
        for (dir, expected) in [("R", &expected_r), ("W", &expected_w)] {
            assert_eq!(record["directions"][dir]["packets"], 150, "{record}");
            let (_, samples) = direction_wav(record, dir);
            assert_samples(&format!("{} {dir}", record["uuid"]), &samples, expected);
        }
    }
    // No callback may hold up a media thread: FreeSWITCH's frame is 20 ms.
    let max_ns = summary["callbacks"]["max_ns"].as_u64().unwrap();
    assert!(max_ns < 20_000_000, "a callback took {max_ns} ns: {summary}");
    finish(host);
}
