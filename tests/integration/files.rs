//! Files and images both ways (issue 22 point 7, CONTRACT.md section 13)
//! against the real Synapse: an agent's file is fetched from a fake file
//! host on 127.0.0.1 (allowed through `AVATAR_ALLOWED_HOSTS`, as a CDN on
//! the private network would be), uploaded once per content and seen by a
//! DAARION person's matrix-nio client; the person's image reaches the fake
//! DAARION.city with a download link that serves it without a Matrix token
//! until it expires.

use std::time::Duration;

use base64::Engine;
use matrix_provisioner::domain::media_link::MediaLinks;
use matrix_provisioner::secret::Secret;
use matrix_provisioner::synapse::Endpoint;
use serde_json::{json, Value};

use crate::agents::*;
use crate::fakes::AvatarHost;
use crate::on_both_backends;
use crate::rooms::*;
use crate::support::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A valid `w`×`h` RGB PNG (stored, uncompressed), its pixels from `seed`.
fn png_image(w: u32, h: u32, seed: u8) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0); // filter: none
        for x in 0..w {
            let v = seed.wrapping_add((x * 31 + y * 17) as u8);
            raw.extend([v, v.wrapping_mul(3), v ^ 0x5a]);
        }
    }
    // zlib, one stored deflate block.
    let mut zlib = vec![0x78, 0x01, 0x01];
    zlib.extend((raw.len() as u16).to_le_bytes());
    zlib.extend((!(raw.len() as u16)).to_le_bytes());
    zlib.extend_from_slice(&raw);
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    zlib.extend(((b << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &zlib);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn with_attachment(s: &Scene, message_id: &str, body: &str, file: Value) -> Value {
    agent_message(s, message_id, json!({"body": body, "attachment": file}))
}

/// An agent's image and PDF as matrix-nio sees them (type, `info`, the
/// bytes through Synapse), the same image twice uploaded once, and files
/// that can never be sent (too big, an internal address) failed with the
/// reason while the room goes on.
async fn an_agent_s_files_are_seen_uploaded_once_or_refused(backend: Backend) {
    let host = AvatarHost::start();
    let cat = png_image(4, 3, 7);
    host.put("cat.png", cat.clone());
    let pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n".to_vec();
    host.put("notes.pdf", pdf.clone());
    let app = spawn_city_with(
        backend,
        &[
            ("AVATAR_ALLOWED_HOSTS", format!("127.0.0.1:{}", host.port)),
            ("ATTACHMENT_MAX_BYTES", "1048576".into()),
        ],
    )
    .await;
    let client = &app.client;
    let admin = SynapseAdmin::shared().await;
    let s = scene(client, backend, "private").await;
    let uploads_before = app.service_synapse.calls().get(Endpoint::MediaUpload);

    let ids: Vec<String> = (0..6).map(|_| unique("msg_")).collect();
    let events = [
        // No caption: the body is the file's name. The declared type is
        // wrong on purpose: the bytes decide.
        with_attachment(
            &s,
            &ids[0],
            "",
            json!({"url": host.url("/img/cat.png"), "mimetype": "application/octet-stream",
                   "name": "cat.png", "size": cat.len()}),
        ),
        // The same bytes again, under another name, with a caption.
        with_attachment(
            &s,
            &ids[1],
            "the cat again",
            json!({"url": host.url("/img/cat.png"), "name": "cat-again.png"}),
        ),
        with_attachment(
            &s,
            &ids[2],
            "the notes",
            json!({"url": host.url("/img/notes.pdf"), "mimetype": "application/pdf",
                   "name": "notes.pdf"}),
        ),
        // 50 MiB streamed without a length, over ATTACHMENT_MAX_BYTES.
        with_attachment(&s, &ids[3], "", json!({"url": host.url("/huge")})),
        // Where the guard never lets a download go.
        with_attachment(
            &s,
            &ids[4],
            "",
            json!({"url": "http://169.254.169.254/latest/meta-data/x.png"}),
        ),
        agent_message(&s, &ids[5], json!({"body": "and that is all"})),
    ];
    let t0 = chrono::Utc::now() - chrono::Duration::minutes(1);
    for (i, e) in events.into_iter().enumerate() {
        let mut e = e;
        e["created_at"] = json!((t0 + chrono::Duration::seconds(i as i64)).to_rfc3339());
        assert_eq!(send_city(client, &e).await.0, 202);
    }

    // Refused for good, with a reason an operator can act on.
    let record = wait_message_state(client, &ids[3], "failed").await;
    let reason = record["last_error"].as_str().unwrap();
    assert!(
        reason.contains("larger than 1048576 bytes (ATTACHMENT_MAX_BYTES)"),
        "{reason}"
    );
    let record = wait_message_state(client, &ids[4], "failed").await;
    let reason = record["last_error"].as_str().unwrap();
    assert!(reason.contains("link-local"), "{reason}");
    wait_message_state(client, &ids[5], "sent").await;
    let sent = host
        .huge_bytes_sent
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent < 20 * 1024 * 1024,
        "{sent} bytes of 50 MiB were produced"
    );

    // What the person's client shows.
    let token = access_token(&admin, &s.person_mxid).await;
    let mut nio = Nio::start(&s.person_mxid, &token, &s.matrix_room).await;
    let seen = nio
        .ask(json!({"cmd": "messages", "sender": s.puppet, "count": 4, "timeout": 60}))
        .await;
    let seen = seen["messages"].as_array().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let (first, second, notes, last) = (&seen[0], &seen[1], &seen[2], &seen[3]);
    assert_eq!(first["message_id"], ids[0].as_str());
    assert_eq!(first["msgtype"], "m.image");
    assert_eq!(first["body"], "cat.png");
    assert_eq!(first["filename"], "cat.png");
    assert_eq!(
        first["info"],
        json!({"size": cat.len(), "mimetype": "image/png", "w": 4, "h": 3})
    );
    let mxc = first["url"].as_str().unwrap();
    assert!(mxc.starts_with("mxc://"), "{mxc}");
    let download = nio.ask(json!({"cmd": "download", "mxc": mxc})).await;
    assert_eq!(
        B64.decode(download["base64"].as_str().unwrap()).unwrap(),
        cat
    );
    assert_eq!(download["content_type"], "image/png");

    assert_eq!(second["message_id"], ids[1].as_str());
    assert_eq!(second["msgtype"], "m.image");
    assert_eq!(second["body"], "the cat again");
    assert_eq!(second["filename"], "cat-again.png");
    assert_eq!(second["url"], mxc, "the same content, the same upload");

    assert_eq!(notes["msgtype"], "m.file");
    assert_eq!(notes["body"], "the notes");
    assert_eq!(
        notes["info"],
        json!({"size": pdf.len(), "mimetype": "application/pdf"})
    );
    let download = nio
        .ask(json!({"cmd": "download", "mxc": notes["url"]}))
        .await;
    assert_eq!(
        B64.decode(download["base64"].as_str().unwrap()).unwrap(),
        pdf
    );
    assert_eq!(last["body"], "and that is all");

    // Fetched each time (the URL may serve other bytes later), uploaded
    // once per content.
    assert_eq!(host.hits("/img/cat.png"), 2);
    let uploads = app.service_synapse.calls().get(Endpoint::MediaUpload) - uploads_before;
    assert_eq!(uploads, 2, "one upload for the cat, one for the notes");
    let record = message_record(client, &ids[1]).await;
    assert_eq!(record["state"], "sent");
    nio.stop().await;
    app.shutdown().await;
}
on_both_backends!(an_agent_s_files_are_seen_uploaded_once_or_refused);

/// Link lifetime in the next test; its expiry is reached by moving the
/// service's clock.
const LINK_SECONDS: u64 = 30;

/// A person's image reaches DAARION.city as `matrix.message` with its
/// attachment, whose download link serves the bytes without any Matrix
/// token (as a download no browser runs), says 503 while Synapse is down,
/// 404 for a forged or unknown link and 410 once expired.
async fn a_person_s_image_reaches_daarion_city_with_a_link_that_expires(backend: Backend) {
    let turn = crate::oidc::TURNS[backend as usize].lock().await;
    let receiver = Receiver::start();
    let proxy = SynapseProxy::start(&shared_synapse().url);
    let public_url = format!("http://127.0.0.1:{}", appservice_port(backend));
    let app = spawn_on_appservice_port(
        backend,
        &[
            ("CITY_EVENTS_URL", receiver.url()),
            ("PUBLIC_URL", public_url.clone()),
            ("MEDIA_LINK_SECONDS", LINK_SECONDS.to_string()),
            ("SYNAPSE_URL", proxy.url.clone()),
        ],
    )
    .await;
    let client = &app.client;
    let admin = SynapseAdmin::shared().await;
    let s = scene(client, backend, "public").await;
    let token = access_token(&admin, &s.person_mxid).await;
    let mut nio = Nio::start(&s.person_mxid, &token, &s.matrix_room).await;

    let photo = png_image(5, 4, 99);
    let sent = nio
        .ask(
            json!({"cmd": "send_file", "base64": B64.encode(&photo), "name": "photo.png",
                    "mimetype": "image/png", "msgtype": "m.image", "info": {"w": 5, "h": 4}}),
        )
        .await;
    let event_id = sent["event_id"].as_str().unwrap().to_string();
    let mxc = sent["mxc"].as_str().unwrap().to_string();
    let delivered = eventually("the image to reach DAARION.city", WAIT, || async {
        receiver
            .events("matrix.message")
            .into_iter()
            .find(|e| e["id"] == event_id.as_str())
    })
    .await;
    let data = &delivered["data"];
    assert_eq!(data["room_id"], s.room_id.as_str());
    assert_eq!(data["sender_id"], s.person_id.as_str());
    let attachment = &data["attachment"];
    assert_eq!(attachment["mxc"], mxc.as_str());
    assert_eq!(attachment["mimetype"], "image/png");
    assert_eq!(attachment["name"], "photo.png");
    assert_eq!(attachment["size"], photo.len());
    let url = attachment["download_url"].as_str().unwrap().to_string();
    let prefix = format!("{public_url}/v1/media/");
    assert!(url.starts_with(&prefix), "{url}");
    let expires =
        chrono::DateTime::parse_from_rfc3339(attachment["download_expires_at"].as_str().unwrap())
            .unwrap();
    let left = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!(
        (0..=LINK_SECONDS as i64 + 1).contains(&left),
        "expires in {left} s"
    );

    // Anyone holding the link gets the bytes: no Matrix token, no cookie.
    let anyone = reqwest::Client::new();
    let response = anyone.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header(&response, "content-type"), "image/png");
    assert!(header(&response, "content-disposition").starts_with("attachment"));
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    assert!(header(&response, "content-security-policy").contains("sandbox"));
    assert_eq!(response.bytes().await.unwrap().to_vec(), photo);

    // Synapse down for a moment: 503, and the link still works after.
    let (server, media_id) = mxc.strip_prefix("mxc://").unwrap().split_once('/').unwrap();
    proxy.fail(
        &format!("/_matrix/client/v1/media/download/{server}/{media_id}"),
        1,
    );
    let response = anyone.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    let response = anyone.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);

    // Forged, altered or unknown links: 404 with the contract's body.
    let token = url.strip_prefix(&prefix).unwrap();
    let mut altered: Vec<char> = token.chars().collect();
    let middle = altered.len() / 2;
    altered[middle] = if altered[middle] == 'A' { 'B' } else { 'A' };
    let altered: String = altered.into_iter().collect();
    let far = chrono::Utc::now().timestamp_millis() + 86_400_000;
    let other_key = MediaLinks::new(&Secret::new("not-the-key"), &public_url, 3_600_000);
    let our_key = MediaLinks::new(&Secret::new(hs_token(backend)), &public_url, 3_600_000);
    let nowhere = format!("mxc://{server}/{}", unique("nosuchmedia"));
    for (what, token) in [
        ("altered", altered),
        ("another key", other_key.token(&mxc, far)),
        ("garbage", "not-a-token".to_string()),
        ("unknown media", our_key.token(&nowhere, far)),
    ] {
        let response = anyone.get(format!("{prefix}{token}")).send().await.unwrap();
        assert_eq!(response.status(), 404, "{what}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{what}: {body}");
        assert!(body["message"].is_string(), "{what}: {body}");
    }

    // Expired: 410, for good.
    app.clock.advance(Duration::from_secs(LINK_SECONDS + 1));
    let response = anyone.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 410);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "link_expired");
    nio.stop().await;
    app.shutdown().await;
    receiver.stop().await;
    proxy.stop().await;
    drop(turn);
}
on_both_backends!(a_person_s_image_reaches_daarion_city_with_a_link_that_expires);
