use super::*;
use crate::config::Config;

fn endpoints(extra: &[&str]) -> Vec<EndpointConfig> {
    let mut text = String::from(
        "[source]\nurl = \"postgres://u@127.0.0.1/db\"\n[[objects]]\ntable = \"t\"\nslug = \"t\"\n",
    );
    for (i, e) in extra.iter().enumerate() {
        text.push_str(&format!(
            "[[endpoints]]\nid = \"e{i}\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"s\"\n{e}\n"
        ));
    }
    Config::from_toml_str_with_env(&text, "t.toml", &|_| None)
        .unwrap()
        .endpoints
}

#[test]
fn a_bucket_spaces_tokens_by_the_rate() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(5.0, t0);
    assert_eq!(b.available(t0), 1);
    b.take(t0);
    assert_eq!(b.available(t0), 0);
    assert_eq!(b.next_token_at(), Some(t0 + Duration::from_millis(200)));
    assert_eq!(b.available(t0 + Duration::from_millis(199)), 0);
    assert_eq!(b.available(t0 + Duration::from_millis(200)), 1);
    // Idle time does not pile up beyond the burst.
    assert_eq!(b.available(t0 + Duration::from_secs(60)), 1);
    assert_eq!(b.next_token_at(), None);
}

#[test]
fn a_fast_bucket_bursts_a_tenth_of_a_second() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(100.0, t0);
    assert_eq!(b.available(t0), 10);
    for _ in 0..10 {
        b.take(t0);
    }
    assert_eq!(b.available(t0 + Duration::from_millis(50)), 5);
    let mut slow = TokenBucket::new(0.5, t0);
    slow.take(t0);
    assert_eq!(slow.next_token_at(), Some(t0 + Duration::from_secs(2)));
}

#[test]
fn limits_combine_the_fair_share_max_in_flight_and_tokens() {
    let t0 = Instant::now();
    let eps = endpoints(&["", "max_in_flight = 2", "rate_limit = 5"]);
    let mut l = Limits::new(30, &eps, t0);
    assert_eq!(l.ids(), ["e0", "e1", "e2"]);
    assert_eq!(l.caps(), [0, 2, 0]);
    assert!(l.any_limited());
    assert_eq!(l.claimable(t0), [10, 2, 1]);
    l.claimed("e1", t0);
    l.claimed("e2", t0);
    l.claimed("e0", t0);
    assert_eq!(l.claimable(t0), [9, 1, 0]);
    assert_eq!(l.wake_at(), Some(t0 + Duration::from_millis(200)));
    l.released("e2");
    // A free slot is not a token.
    assert_eq!(l.claimable(t0 + Duration::from_millis(100)), [9, 1, 0]);
    assert_eq!(l.claimable(t0 + Duration::from_millis(200)), [9, 1, 1]);
    l.released("e1");
    l.released("unknown");
    assert_eq!(l.claimable(t0 + Duration::from_millis(200))[1], 2);
    assert!(!Limits::new(4, &endpoints(&["", ""]), t0).any_limited());
}
