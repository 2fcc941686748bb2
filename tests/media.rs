//! Camera frames end to end: real MQTT clients publish whole and chunked frames, thumbnails
//! arrive on `cameras/<id>/thumb`, stored media is served over HTTP, and every kind of bad
//! input is reported on `cameras/<id>/status` while the broker keeps serving.

mod common;

use common::{TestBroker, WAIT, http_get, raw, test_config, v4, v5};
use moonwire::app::App;
use moonwire::config::{ByteSize, Config};
use moonwire::media::PixelFormat;
use moonwire::media::fchunk::{FrameSpec, encode_frame};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Test config with the camera-thumbs block of the default config.
fn media_config() -> Config {
    let mut cfg = test_config();
    cfg.blocks = Config::defaults()
        .unwrap()
        .blocks
        .into_iter()
        .filter(|b| b.name == "camera-thumbs")
        .collect();
    cfg
}

async fn start(cfg: Config) -> TestBroker {
    TestBroker::start_app(App::new(cfg)).await
}

fn chunks(frame: &[u8], id: u16, chunk_size: u16) -> Vec<Vec<u8>> {
    encode_frame(
        FrameSpec {
            frame_id: id,
            format: PixelFormat::Jpeg,
            width: 0,
            height: 0,
            chunk_size,
        },
        frame,
    )
    .unwrap()
}

/// Status reports for a camera, as parsed JSON.
async fn next_status(sub: &mut v4::Client) -> serde_json::Value {
    loop {
        let p = sub.next_publish().await.expect("status report");
        if p.topic.ends_with("/status") {
            return serde_json::from_slice(&p.payload).unwrap();
        }
    }
}

/// Raw HTTP GET with headers: (status, headers, body).
async fn http(addr: std::net::SocketAddr, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    (status, head, out[split + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_frame_gives_thumbnail_event_and_http() {
    let b = start(media_config()).await;
    let mut sub = v4::connect(v4::options(b.port(), "dash")).await;
    sub.subscribe("cameras/+/thumb", v4::QoS::AtLeastOnce).await;
    sub.subscribe("cameras/+/events", v4::QoS::AtLeastOnce)
        .await;
    let frame = fixture("vga_coffee.jpg");
    let mut cam = v4::connect(v4::options(b.port(), "porch")).await;
    cam.publish_acked("cameras/porch/frame", false, frame.clone())
        .await;

    let (mut thumb, mut event) = (None, None);
    while thumb.is_none() || event.is_none() {
        let p = sub.next_publish().await.expect("thumb and event");
        if p.topic.ends_with("/thumb") {
            thumb = Some(p.payload.to_vec());
        } else {
            event = Some(serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap());
        }
    }
    let thumb = thumb.unwrap();
    let img =
        image::load_from_memory_with_format(&thumb, image::ImageFormat::Jpeg).expect("valid JPEG");
    assert_eq!((img.width(), img.height()), (160, 120));
    let event = event.unwrap();
    // Retained: a dashboard that connects later gets the latest thumbnail at once.
    let mut late = v4::connect(v4::options(b.port(), "late")).await;
    late.subscribe("cameras/porch/thumb", v4::QoS::AtLeastOnce)
        .await;
    let r = late.next_publish().await.expect("retained thumbnail");
    assert!(r.retain);
    assert_eq!(r.payload.to_vec(), thumb);
    assert_eq!(
        (event["width"].as_u64(), event["height"].as_u64()),
        (Some(640), Some(480))
    );
    assert_eq!(event["bytes"].as_u64(), Some(frame.len() as u64));

    let http_addr = b.running().http.unwrap();
    let (status, head, body) = http(http_addr, "/media/porch/latest.jpg", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: image/jpeg") && head.contains("cache-control: no-cache"));
    assert_eq!(body, frame, "stored frame is the published frame");
    let (status, head, body) = http(http_addr, "/media/porch/latest-thumb.jpg", "").await;
    assert_eq!((status, body), (200, thumb.clone()));
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .to_string();
    let (status, _, _) = http(
        http_addr,
        "/media/porch/latest-thumb.jpg",
        &format!("If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!(status, 304);
    let url = event["thumb_url"].as_str().unwrap();
    let (status, head, body) = http(http_addr, url, "").await;
    assert_eq!((status, body), (200, thumb));
    assert!(head.contains("immutable"));
    for bad in [
        "/media/nobody/latest.jpg",
        "/media/..%2F..%2Fetc%2Fpasswd",
        "/media/porch%2F..%2F..%2Fblocks.redb",
        "/media/x.1.1.thumb.jpg",
    ] {
        assert_eq!(http_get(http_addr, bad).await.0, 404, "{bad}");
    }
    let m = b.metrics().await;
    assert!(
        m.contains("moonwire_frames_completed_total 1")
            && m.contains("moonwire_thumbnails_total 1"),
        "{m}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_frames_in_any_order_qos0_and_qos1() {
    let b = start(media_config()).await;
    let (mut watcher, _) = v5::connect(v5::options(b.port(), "watch")).await;
    watcher
        .subscribe("cameras/cam2/frame", v5::QoS::AtLeastOnce)
        .await;
    let mut thumbs = v4::connect(v4::options(b.port(), "thumbs")).await;
    thumbs
        .subscribe("cameras/cam2/thumb", v4::QoS::AtLeastOnce)
        .await;
    let frame = fixture("uxga_rocket.jpg");
    for (qos, id) in [(0u8, 1u16), (1, 2)] {
        let mut parts = chunks(&frame, id, 4000);
        parts.reverse();
        let dup = parts[3].clone();
        parts.insert(7, dup);
        let mut c = raw::Conn::open(b.mqtt).await;
        c.send(&raw::connect(4, "cam2", 0)).await;
        c.read(WAIT).await.unwrap();
        for (i, p) in parts.iter().enumerate() {
            c.send(&raw::publish(
                4,
                b"cameras/cam2/frame",
                p,
                qos,
                i as u16 + 1,
            ))
            .await;
        }
        if qos == 1 {
            for _ in 0..parts.len() {
                assert_eq!(c.read(WAIT).await.unwrap().0, 0x40, "every chunk is acked");
            }
        }
        let got = watcher.next_publish().await.expect("the reassembled frame");
        assert_eq!(
            &got.payload[..],
            &frame[..],
            "one publish with the whole frame"
        );
        let props = got.properties.unwrap();
        assert_eq!(props.content_type.as_deref(), Some("image/jpeg"));
        assert!(
            props
                .user_properties
                .contains(&("frame_id".to_string(), id.to_string()))
        );
        let t = thumbs.next_publish().await.expect("thumbnail");
        let img = image::load_from_memory(&t.payload).unwrap();
        assert_eq!(img.width(), 160);
    }
    // Chunks themselves were never routed.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watcher.next_publish())
            .await
            .map_or(true, |p| p.is_none())
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_rgb565_frames_are_thumbnailed() {
    let b = start(media_config()).await;
    let mut thumbs = v4::connect(v4::options(b.port(), "thumbs")).await;
    thumbs
        .subscribe("cameras/raw/thumb", v4::QoS::AtLeastOnce)
        .await;
    // A solid red 320×240 RGB565LE frame: 0xF800.
    let frame: Vec<u8> = std::iter::repeat_n([0x00u8, 0xF8], 320 * 240)
        .flatten()
        .collect();
    let parts = encode_frame(
        FrameSpec {
            frame_id: 9,
            format: PixelFormat::Rgb565Le,
            width: 320,
            height: 240,
            chunk_size: 4000,
        },
        &frame,
    )
    .unwrap();
    let mut cam = v4::connect(v4::options(b.port(), "raw")).await;
    for p in parts {
        cam.publish_acked("cameras/raw/frame", false, p).await;
    }
    let t = thumbs.next_publish().await.expect("thumbnail");
    let img = image::load_from_memory(&t.payload).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (160, 120));
    let px = img.get_pixel(80, 60);
    assert!(
        px[0] > 200 && px[1] < 60 && px[2] < 60,
        "red expected, got {px:?}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_reported_and_nothing_else_is_lost() {
    let mut cfg = media_config();
    cfg.media.frame_timeout = Duration::from_millis(300);
    cfg.media.max_frame_size = ByteSize(300 * 1024);
    let b = start(cfg).await;
    let mut sub = v4::connect(v4::options(b.port(), "ops")).await;
    sub.subscribe("cameras/+/status", v4::QoS::AtLeastOnce)
        .await;
    let frame = fixture("vga_chelsea.jpg");

    // Random bytes: v5 PUBACK 0x99 and a bad_chunk report.
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(5, "junk", 0)).await;
    c.read(WAIT).await.unwrap();
    c.send(&raw::publish(
        5,
        b"cameras/junk/frame",
        &[0x13u8; 500],
        1,
        1,
    ))
    .await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!((first, &body[..3]), (0x40, &[0u8, 1, 0x99][..]));
    assert_eq!(next_status(&mut sub).await["error"], "bad_chunk");

    let mut cam = v4::connect(v4::options(b.port(), "cam")).await;
    let topic = "cameras/cam/frame";
    // Malformed chunks: wrong version, index ≥ count, wrong length, frame_len over the cap.
    let good = chunks(&frame, 5, 4000);
    let mut bad_version = good[0].clone();
    bad_version[1] = 2;
    let mut bad_index = good[0].clone();
    bad_index[6..8].copy_from_slice(&999u16.to_le_bytes());
    let mut bad_len = good[0].clone();
    bad_len.truncate(100);
    let mut too_large = good[0].clone();
    too_large[16..20].copy_from_slice(&(10u32 << 20).to_le_bytes());
    too_large[8..10].copy_from_slice(&((10u32 << 20).div_ceil(4000) as u16).to_le_bytes());
    for (p, want) in [
        (bad_version, "bad_chunk"),
        (bad_index, "bad_chunk"),
        (bad_len, "bad_chunk"),
        (too_large, "too_large"),
    ] {
        cam.publish_acked(topic, false, p).await;
        assert_eq!(next_status(&mut sub).await["error"], want);
    }
    // Bad CRC: every chunk arrives, the CRC does not match.
    let mut crc = chunks(&frame, 6, 4000);
    for p in &mut crc {
        p[20] ^= 0xFF;
    }
    for p in crc {
        cam.publish_acked(topic, false, p).await;
    }
    let s = next_status(&mut sub).await;
    assert_eq!(
        (s["error"].as_str(), s["frame_id"].as_u64()),
        (Some("crc"), Some(6))
    );
    // A missing chunk: timeout.
    let mut missing = chunks(&frame, 7, 4000);
    missing.remove(3);
    for p in missing {
        cam.publish_acked(topic, false, p).await;
    }
    let s = next_status(&mut sub).await;
    assert_eq!(
        (s["error"].as_str(), s["frame_id"].as_u64()),
        (Some("timeout"), Some(7))
    );
    // Three interleaved frames from one device: the oldest is evicted, two complete.
    let frames: Vec<Vec<Vec<u8>>> = (10..13).map(|id| chunks(&frame, id, 4000)).collect();
    for i in 0..frames[0].len() {
        for f in &frames {
            cam.publish_acked(topic, false, f[i].clone()).await;
        }
    }
    let s = next_status(&mut sub).await;
    assert_eq!(
        (s["error"].as_str(), s["frame_id"].as_u64()),
        (Some("evicted"), Some(10))
    );
    // A truncated JPEG and a PNG bomb reach the block, which reports the failed thumbnail.
    cam.publish_acked(topic, false, frame[..frame.len() / 3].to_vec())
        .await;
    assert_eq!(next_status(&mut sub).await["error"], "thumbnail");
    cam.publish_acked(topic, false, png_bomb()).await;
    let s = next_status(&mut sub).await;
    assert_eq!(s["error"], "thumbnail");
    assert!(
        s["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("large"),
        "{s}"
    );
    // A client disconnecting mid-frame: timeout for its partial frame.
    let mut quitter = raw::Conn::open(b.mqtt).await;
    quitter.send(&raw::connect(4, "quitter", 0)).await;
    quitter.read(WAIT).await.unwrap();
    quitter
        .send(&raw::publish(
            4,
            b"cameras/quitter/frame",
            &chunks(&frame, 3, 4000)[0],
            0,
            0,
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(quitter);
    let s = next_status(&mut sub).await;
    assert_eq!(
        (s["error"].as_str(), s["frame_id"].as_u64()),
        (Some("timeout"), Some(3))
    );
    // After all that, a good frame still goes through.
    let mut thumbs = v4::connect(v4::options(b.port(), "t")).await;
    thumbs
        .subscribe("cameras/cam/thumb", v4::QoS::AtLeastOnce)
        .await;
    let _retained = thumbs.next_publish_within(Duration::from_millis(300)).await;
    for p in chunks(&frame, 20, 4000) {
        cam.publish_acked(topic, false, p).await;
    }
    assert!(thumbs.next_publish().await.is_some());
    b.stop().await;
}

/// A PNG whose header claims 65535×65535 pixels.
fn png_bomb() -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&65535u32.to_be_bytes());
    ihdr.extend_from_slice(&65535u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&ihdr);
    let crc = crc32fast::hash(&chunk);
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&chunk);
    png.extend_from_slice(&crc.to_be_bytes());
    png.extend_from_slice(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]);
    png
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_same_frame_id_never_mix() {
    let b = start(media_config()).await;
    let (mut w, _) = v5::connect(v5::options(b.port(), "w")).await;
    w.subscribe("cameras/+/frame", v5::QoS::AtLeastOnce).await;
    let (a, bb) = (fixture("qvga_astronaut.jpg"), fixture("qvga_rocket.jpg"));
    let mut ca = v4::connect(v4::options(b.port(), "a")).await;
    let mut cb = v4::connect(v4::options(b.port(), "b")).await;
    let (pa, pb) = (chunks(&a, 42, 2000), chunks(&bb, 42, 2000));
    for i in 0..pa.len().max(pb.len()) {
        if let Some(p) = pa.get(i) {
            ca.publish_acked("cameras/a/frame", false, p.clone()).await;
        }
        if let Some(p) = pb.get(i) {
            cb.publish_acked("cameras/b/frame", false, p.clone()).await;
        }
    }
    let mut got = std::collections::HashMap::new();
    for _ in 0..2 {
        let p = w.next_publish().await.unwrap();
        got.insert(
            String::from_utf8(p.topic.to_vec()).unwrap(),
            p.payload.to_vec(),
        );
    }
    assert_eq!(got["cameras/a/frame"], a);
    assert_eq!(got["cameras/b/frame"], bb);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_partial_frames_stay_under_the_memory_cap() {
    let mut cfg = media_config();
    cfg.media.max_reassembly_memory = ByteSize(4 << 20);
    let b = start(cfg).await;
    let mut sub = v4::connect(v4::options(b.port(), "ops")).await;
    sub.subscribe("cameras/+/status", v4::QoS::AtLeastOnce)
        .await;
    let frame = fixture("vga_rocket.jpg"); // ~43 KB: 200 partials need ~8.5 MB.
    let first = chunks(&frame, 1, 4000).remove(0);
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut c = raw::Conn::open(b.mqtt).await;
        c.send(&raw::connect(4, &format!("cam{i}"), 0)).await;
        c.read(WAIT).await.unwrap();
        c.send(&raw::publish(
            4,
            format!("cameras/cam{i}/frame").as_bytes(),
            &first,
            1,
            1,
        ))
        .await;
        assert_eq!(c.read(WAIT).await.unwrap().0, 0x40);
        clients.push(c);
    }
    let m = b.metrics().await;
    let used: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("moonwire_reassembly_memory_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(used <= 4 << 20, "reassembly memory {used} over the cap");
    assert!(used > 2 << 20, "cap not used: {used}");
    assert_eq!(next_status(&mut sub).await["error"], "memory");
    // The newest partial frame still completes.
    let c = clients.last_mut().unwrap();
    for (i, p) in chunks(&frame, 1, 4000).into_iter().enumerate().skip(1) {
        c.send(&raw::publish(
            4,
            b"cameras/cam199/frame",
            &p,
            1,
            i as u16 + 1,
        ))
        .await;
        assert_eq!(c.read(WAIT).await.unwrap().0, 0x40);
    }
    let mut done = false;
    for _ in 0..50 {
        if b.metrics()
            .await
            .contains("moonwire_frames_completed_total 1\n")
        {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "newest partial frame did not complete");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_data_dir_keeps_routing() {
    let mut cfg = media_config();
    // A regular file where the data directory should be: nothing can be stored.
    let f = tempfile::NamedTempFile::new().unwrap();
    cfg.storage.data_dir = f.path().join("sub");
    // The broker's own store refuses to start without its directory (tests/durability.rs);
    // this test is about media storage failing while the broker runs.
    cfg.storage.persistence = false;
    cfg.block_engine.kv_path = tempfile::tempdir()
        .unwrap()
        .keep()
        .join("kv.redb")
        .to_string_lossy()
        .into_owned();
    let b = start(cfg).await;
    let mut sub = v4::connect(v4::options(b.port(), "s")).await;
    sub.subscribe("cameras/#", v4::QoS::AtLeastOnce).await;
    let mut cam = v4::connect(v4::options(b.port(), "c")).await;
    let frame = fixture("qvga_coffee.jpg");
    cam.publish_acked("cameras/c/frame", false, frame.clone())
        .await;
    let mut saw = (false, false);
    while !(saw.0 && saw.1) {
        let p = sub
            .next_publish()
            .await
            .expect("frame and thumbnail still flow");
        if p.topic == "cameras/c/frame" {
            saw.0 = true;
        }
        if p.topic == "cameras/c/events" {
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            assert!(v["url"].is_null(), "nothing stored: {v}");
            saw.1 = true;
        }
    }
    assert_eq!(
        http_get(b.running().http.unwrap(), "/media/c/latest.jpg")
            .await
            .0,
        503
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_are_not_reassembled_even_under_a_wide_filter() {
    let mut cfg = media_config();
    cfg.media.frame_topics = vec!["cameras/#".into()];
    cfg.media.max_frame_size = ByteSize(100 * 1024);
    let b = start(cfg).await;
    let mut sub = v4::connect(v4::options(b.port(), "ops")).await;
    sub.subscribe("cameras/+/status", v4::QoS::AtLeastOnce)
        .await;
    let mut cam = v4::connect(v4::options(b.port(), "loopcam")).await;
    cam.publish_acked("cameras/loopcam/frame", false, vec![0x42u8; 64])
        .await;
    // An oversized chunked frame is reported once, not once per chunk.
    let big = vec![0xAB; 300 * 1024];
    for p in chunks(&big, 4, 4000) {
        cam.publish_acked("cameras/loopcam/frame", false, p).await;
    }
    let mut reports = Vec::new();
    while let Some(p) = sub.next_publish_within(Duration::from_millis(800)).await {
        reports.push(
            serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap()["error"].clone(),
        );
    }
    assert_eq!(
        reports,
        vec![
            serde_json::json!("bad_chunk"),
            serde_json::json!("too_large")
        ]
    );
    b.stop().await;
}
