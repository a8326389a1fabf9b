//! Conversations with agents (issue 22, CONTRACT.md section 13) against the
//! real Synapse, with matrix-nio as the person (tests/clients/
//! nio_conversation.py): a direct chat opened as Element opens one, a
//! streamed answer, typing, threads, edits, deletions and reactions both
//! ways, read receipts, the chat's end; and a streamed answer through a
//! SIGKILL.

use serde_json::{json, Value};

use crate::agents::*;
use crate::on_both_backends;
use crate::operability::sample;
use crate::rooms::*;
use crate::support::*;

/// Events of `kind` for the conversation, as DAARION.city received them.
fn of_conversation(receiver: &Receiver, kind: &str, conversation_id: &str) -> Vec<Value> {
    receiver
        .events(kind)
        .into_iter()
        .filter(|e| e["data"]["conversation_id"] == conversation_id)
        .collect()
}

async fn wait_event(receiver: &Receiver, kind: &str, what: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("DAARION.city to receive {kind}"), WAIT, || async {
        receiver.events(kind).into_iter().find(|e| what(e))
    })
    .await
}

fn in_conversation(event: &str, agent_id: &str, conversation_id: &str, mut data: Value) -> Value {
    data["agent_id"] = json!(agent_id);
    data["conversation_id"] = json!(conversation_id);
    city_event(event, data)
}

/// How much the counter `series` grew between two scrapes of `/metrics`
/// (absent: 0). Counters are per process, which tests share: at least.
fn grew(before: &str, after: &str, series: &str) -> f64 {
    sample(after, series).unwrap_or(0.0) - sample(before, series).unwrap_or(0.0)
}

/// Everything a person does with an agent in a direct chat, and back.
async fn a_direct_chat_with_an_agent(backend: Backend) {
    let turn = crate::oidc::TURNS[backend as usize].lock().await;
    let receiver = Receiver::start();
    let app = spawn_on_appservice_port(
        backend,
        &[
            ("CITY_EVENTS_URL", receiver.url()),
            ("CITY_READ_RECEIPTS", "on".into()),
        ],
    )
    .await;
    let client = &app.client;
    let metrics_before = metrics_text(client).await;
    let admin = SynapseAdmin::shared().await;
    let s = scene(client, backend, "public").await;
    let token = access_token(&admin, &s.person_mxid).await;

    // An agent that does not take direct chats turns the invitation down.
    let mut nio = Nio::start_client("nio_conversation.py", &[&s.person_mxid, &token]).await;
    let opened = nio
        .ask(json!({"cmd": "open", "agent": s.puppet, "timeout": 60}))
        .await;
    assert_eq!(opened["agent_membership"], "leave", "{opened}");
    nio.stop().await;

    // DAARION.city lets it: the next invitation is accepted.
    let allow = city_event(
        "agent.updated",
        json!({"agent_id": s.agent_id, "accepts_direct_chats": true}),
    );
    assert_eq!(send_city(client, &allow).await.0, 202);

    // Even so, someone who is not a DAARION person (a plain Matrix account)
    // is turned down, saying why, and DAARION.city hears nothing of it
    // (checked at the end).
    let stranger_localpart = unique("stranger-");
    admin
        .register_raw(&stranger_localpart, false, true)
        .await
        .expect("a plain Matrix account");
    let stranger = admin.user_id(&stranger_localpart);
    let stranger_token = access_token(&admin, &stranger).await;
    let mut other = Nio::start_client("nio_conversation.py", &[&stranger, &stranger_token]).await;
    let opened = other
        .ask(json!({"cmd": "open", "agent": s.puppet, "timeout": 60}))
        .await;
    assert_eq!(opened["agent_membership"], "leave", "{opened}");
    other.stop().await;
    let stranger_room = opened["room_id"].as_str().unwrap().to_string();
    let (status, state) = admin
        .get(&format!(
            "/_synapse/admin/v1/rooms/{}/state",
            enc(&stranger_room)
        ))
        .await;
    assert_eq!(status, 200, "{state}");
    let puppet_left = state["state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == s.puppet.as_str())
        .expect("the puppet's membership");
    assert_eq!(puppet_left["content"]["membership"], "leave");
    assert_eq!(
        puppet_left["content"]["reason"], "only DAARION people can chat with agents",
        "turned down as a stranger, not for the agent's setting"
    );

    let mut nio = Nio::start_client("nio_conversation.py", &[&s.person_mxid, &token]).await;
    let opened = nio
        .ask(json!({"cmd": "open", "agent": s.puppet, "timeout": 60}))
        .await;
    assert_eq!(opened["agent_membership"], "join", "{opened}");
    let matrix_room = opened["room_id"].as_str().unwrap().to_string();
    let started = wait_event(&receiver, "matrix.conversation_started", |e| {
        e["data"]["matrix_room_id"] == matrix_room.as_str()
    })
    .await;
    assert_eq!(started["data"]["agent_id"], s.agent_id);
    assert_eq!(started["data"]["sender_id"], s.person_id);
    let conversation = started["data"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The puppet counts the room among its direct chats with the person.
    let puppet_token = access_token(&admin, &s.puppet).await;
    let direct = reqwest::Client::new()
        .get(format!(
            "{}/_matrix/client/v3/user/{}/account_data/m.direct",
            shared_synapse().url,
            enc(&s.puppet)
        ))
        .bearer_auth(&puppet_token)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    let direct: Value = direct.json().await.unwrap();
    assert_eq!(direct[&s.person_mxid], json!([matrix_room]), "{direct}");

    // The person speaks: a matrix.message of the conversation.
    let hello = nio
        .ask(json!({"cmd": "send", "body": "Привіт, агенте"}))
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let told = wait_event(&receiver, "matrix.message", |e| e["id"] == hello.as_str()).await;
    assert_eq!(told["data"]["conversation_id"], conversation);
    assert!(told["data"]["room_id"].is_null(), "{told}");
    assert_eq!(told["data"]["sender_id"], s.person_id);

    // The agent types, then streams its answer: 50 parts in 2 s.
    let typing = in_conversation(
        "agent.typing",
        &s.agent_id,
        &conversation,
        json!({"typing": true, "timeout_ms": 20000}),
    );
    assert_eq!(send_city(client, &typing).await.0, 202);
    let seen = nio
        .ask(json!({"cmd": "typing", "user_id": s.puppet, "timeout": 30}))
        .await;
    assert_eq!(seen["typing"], true, "the person sees the agent typing");

    let answer = unique("ans_");
    let words: Vec<String> = (1..=50).map(|i| format!("слово{i}")).collect();
    let t0 = chrono::Utc::now();
    let started_at = std::time::Instant::now();
    for i in 1..=50 {
        let part = in_conversation(
            "agent.message",
            &s.agent_id,
            &conversation,
            json!({"message_id": answer, "body": words[..i].join(" "), "final": i == 50,
                   "reply_to": hello}),
        );
        let part = at(part, t0 + chrono::Duration::milliseconds(i as i64));
        assert_eq!(send_city(client, &part).await.0, 202);
        let due = std::time::Duration::from_millis(40 * i as u64);
        if let Some(rest) = due.checked_sub(started_at.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    let final_text = words.join(" ");
    let seen = nio
        .ask(json!({"cmd": "events", "sender": s.puppet, "timeout": 60,
                    "until": {"type": "m.room.message",
                              "path": ["content", "m.new_content", "body"],
                              "equals": final_text}}))
        .await;
    let events = seen["events"].as_array().unwrap();
    let messages: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .collect();
    let originals: Vec<&&Value> = messages
        .iter()
        .filter(|e| e["content"]["m.relates_to"]["rel_type"] != "m.replace")
        .collect();
    let edits: Vec<&&Value> = messages
        .iter()
        .filter(|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace")
        .collect();
    assert_eq!(
        originals.len(),
        1,
        "one message in the history: {originals:?}"
    );
    let original = originals[0]["event_id"].as_str().unwrap().to_string();
    assert_eq!(originals[0]["content"]["city.daarion.message_id"], answer);
    assert_eq!(
        originals[0]["content"]["m.relates_to"]["m.in_reply_to"]["event_id"],
        hello
    );
    assert!(
        !edits.is_empty() && edits.len() <= 14,
        "a bounded number of edits for 50 parts in 2 s: {}",
        edits.len()
    );
    assert!(edits
        .iter()
        .all(|e| e["content"]["m.relates_to"]["event_id"] == original.as_str()));
    assert_eq!(
        edits.last().unwrap()["content"]["m.new_content"]["body"],
        final_text,
        "the last edit is the final text"
    );
    let record = wait_message_state(client, &answer, "sent").await;
    assert_eq!(record["final"], true);
    assert_eq!(record["edits"], edits.len());
    assert_eq!(record["conversation_id"], conversation);

    // Threads both ways.
    let in_thread = unique("thr_");
    let e = in_conversation(
        "agent.message",
        &s.agent_id,
        &conversation,
        json!({"message_id": in_thread, "body": "in the thread", "thread_of": hello}),
    );
    assert_eq!(send_city(client, &e).await.0, 202);
    let seen = nio
        .ask(json!({"cmd": "events", "sender": s.puppet, "timeout": 30,
                    "until": {"path": ["content", "city.daarion.message_id"],
                              "equals": in_thread}}))
        .await;
    let threaded = seen["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["city.daarion.message_id"] == in_thread.as_str())
        .cloned()
        .expect("the thread's answer");
    assert_eq!(threaded["content"]["m.relates_to"]["rel_type"], "m.thread");
    assert_eq!(threaded["content"]["m.relates_to"]["event_id"], hello);
    let reply = nio
        .ask(json!({"cmd": "send", "body": "answer in thread", "thread_of": original}))
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let told = wait_event(&receiver, "matrix.message", |e| e["id"] == reply.as_str()).await;
    assert_eq!(told["data"]["thread_of"], answer, "the agent's message_id");
    assert!(
        told["data"]["reply_to"].is_null(),
        "a thread's fallback is no reply"
    );

    // The person edits, reacts, takes the reaction back, deletes.
    let edit = nio
        .ask(json!({"cmd": "edit", "event_id": hello, "body": "Привіт, агенте!"}))
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let like = nio
        .ask(json!({"cmd": "react", "event_id": original, "key": "👍"}))
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let unlike = nio.ask(json!({"cmd": "redact", "event_id": like})).await["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let gone = nio.ask(json!({"cmd": "redact", "event_id": reply})).await["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deleted = wait_event(&receiver, "matrix.message_deleted", |e| {
        e["id"] == gone.as_str()
    })
    .await;
    assert_eq!(deleted["data"]["message_id"], reply);
    assert_eq!(deleted["data"]["by_moderator"], false);
    assert_eq!(deleted["data"]["sender_id"], s.person_id);
    let edited = of_conversation(&receiver, "matrix.message_edited", &conversation);
    assert_eq!(edited.len(), 1, "{edited:?}");
    assert_eq!(edited[0]["id"], edit);
    assert_eq!(edited[0]["data"]["message_id"], hello);
    assert_eq!(edited[0]["data"]["body"], "Привіт, агенте!");
    let reactions = of_conversation(&receiver, "matrix.reaction", &conversation);
    assert_eq!(reactions.len(), 2, "{reactions:?}");
    assert_eq!(reactions[0]["id"], like);
    assert_eq!(
        reactions[0]["data"]["target"], answer,
        "by the agent's message_id"
    );
    assert_eq!(reactions[0]["data"]["key"], "👍");
    assert_eq!(reactions[0]["data"]["removed"], false);
    assert_eq!(reactions[1]["id"], unlike);
    assert_eq!(reactions[1]["data"]["removed"], true);
    assert_eq!(reactions[1]["data"]["key"], "👍");

    // Each once, in the order the person did them.
    let stream: Vec<String> = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            e["data"]["conversation_id"] == conversation.as_str()
                || e["data"]["matrix_room_id"] == matrix_room.as_str()
                || e["id"] == gone.as_str()
        })
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let started_id = started["id"].as_str().unwrap().to_string();
    assert_eq!(
        stream,
        [
            started_id,
            hello.clone(),
            reply.clone(),
            edit,
            like,
            unlike,
            gone
        ],
        "each event once, in order"
    );

    // The person reads the answer: with CITY_READ_RECEIPTS on, DAARION.city
    // hears it, naming the agent's message.
    nio.ask(json!({"cmd": "read", "event_id": original})).await;
    let read = wait_event(&receiver, "matrix.read", |e| {
        e["data"]["conversation_id"] == conversation.as_str()
    })
    .await;
    assert_eq!(read["data"]["up_to"], answer);
    assert_eq!(read["data"]["sender_id"], s.person_id);

    // Synapse hands the same receipt over again (a transaction sent twice,
    // and a later one with another ts), beside the person's next receipt,
    // up to the agent's answer in the thread: DAARION.city hears each
    // reader and event once.
    let thread_event = threaded["event_id"].as_str().unwrap().to_string();
    let now = chrono::Utc::now().timestamp_millis();
    let receipts = |ts: i64| {
        json!({"events": [], "ephemeral": [
            read_receipt(&matrix_room, &s.person_mxid, &original, ts),
            read_receipt(&matrix_room, &s.person_mxid, &thread_event, ts),
        ]})
    };
    let resent = unique("receipts-");
    put_transaction(client, backend, &resent, &receipts(now)).await;
    put_transaction(client, backend, &resent, &receipts(now)).await;
    put_transaction(client, backend, &unique("receipts-"), &receipts(now + 1)).await;
    // Answered 200 once stored: whatever they queued is delivered now.
    drained(client).await;
    let reads = of_conversation(&receiver, "matrix.read", &conversation);
    let up_to: Vec<&str> = reads
        .iter()
        .map(|r| r["data"]["up_to"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        up_to,
        [answer.as_str(), in_thread.as_str()],
        "once per reader and event: {reads:?}"
    );

    // The agent reacts, edits, reads and deletes.
    let react = city_event(
        "agent.reaction",
        json!({"agent_id": s.agent_id, "target": hello, "key": "👀"}),
    );
    assert_eq!(send_city(client, &react).await.0, 202);
    let edit_answer = city_event(
        "agent.message_edited",
        json!({"message_id": answer, "body": "a better answer"}),
    );
    assert_eq!(send_city(client, &edit_answer).await.0, 202);
    let read = in_conversation(
        "agent.read",
        &s.agent_id,
        &conversation,
        json!({"up_to": hello}),
    );
    assert_eq!(send_city(client, &read).await.0, 202);
    let seen = nio
        .ask(json!({"cmd": "receipt", "user_id": s.puppet, "event_id": hello, "timeout": 30}))
        .await;
    assert_eq!(seen["read"], true, "the agent's read receipt");
    let seen = nio
        .ask(json!({"cmd": "events", "sender": s.puppet, "timeout": 30,
                    "until": {"path": ["content", "m.new_content", "body"],
                              "equals": "a better answer"}}))
        .await;
    let events = seen["events"].as_array().unwrap();
    let reaction: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "m.reaction")
        .collect();
    assert_eq!(reaction.len(), 1, "{reaction:?}");
    assert_eq!(reaction[0]["content"]["m.relates_to"]["event_id"], hello);
    assert_eq!(reaction[0]["content"]["m.relates_to"]["key"], "👀");
    assert!(events
        .iter()
        .any(|e| e["content"]["m.new_content"]["body"] == "a better answer"));
    // Operators see both: the reaction under its row id (which it carries),
    // the answer with one edit more than its parts made.
    let reaction_row = reaction[0]["content"]["city.daarion.message_id"]
        .as_str()
        .expect("the reaction's row id")
        .to_string();
    let record = wait_message_state(client, &reaction_row, "sent").await;
    assert_eq!(record["kind"], "reaction");
    assert_eq!(record["event_id"], reaction[0]["event_id"]);
    assert_eq!(record["conversation_id"], conversation);
    assert_eq!(record["deleted"], false);
    let record = wait_message_state(client, &answer, "sent").await;
    assert_eq!(record["edits"], edits.len() + 1, "{record}");
    let delete = city_event(
        "agent.message_deleted",
        json!({"message_id": in_thread, "reason": "outdated"}),
    );
    assert_eq!(send_city(client, &delete).await.0, 202);
    let thread_event = threaded["event_id"].as_str().unwrap().to_string();
    let seen = nio
        .ask(json!({"cmd": "events", "sender": s.puppet, "timeout": 30,
                    "until": {"type": "m.room.redaction", "path": ["redacts"],
                              "equals": thread_event}}))
        .await;
    assert!(
        seen["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.redaction"),
        "the agent's message is redacted"
    );
    let record = wait_message_state(client, &in_thread, "sent").await;
    assert_eq!(record["deleted"], true);

    // The agent takes its reaction back: the reaction is redacted.
    let unreact = city_event(
        "agent.reaction",
        json!({"agent_id": s.agent_id, "target": hello, "key": "👀", "removed": true}),
    );
    assert_eq!(send_city(client, &unreact).await.0, 202);
    let reaction_event = reaction[0]["event_id"].as_str().unwrap().to_string();
    let seen = nio
        .ask(json!({"cmd": "events", "sender": s.puppet, "timeout": 30,
                    "until": {"type": "m.room.redaction", "path": ["redacts"],
                              "equals": reaction_event}}))
        .await;
    assert!(
        seen["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.redaction" && e["redacts"] == reaction_event.as_str()),
        "the agent's reaction is taken back"
    );
    let record = eventually("the reaction's row to show it taken back", WAIT, || async {
        let r = message_record(client, &reaction_row).await;
        (r["state"] == "sent" && r["deleted"] == true).then_some(r)
    })
    .await;
    assert_eq!(record["event_id"], reaction_event);

    // The person, the room's admin, takes the agent's answer down: reported
    // as a moderator's deletion, by the agent's message_id.
    let takedown = nio
        .ask(json!({"cmd": "redact", "event_id": original}))
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deleted = wait_event(&receiver, "matrix.message_deleted", |e| {
        e["id"] == takedown.as_str()
    })
    .await;
    assert_eq!(deleted["data"]["message_id"], answer);
    assert_eq!(deleted["data"]["by_moderator"], true);
    assert_eq!(deleted["data"]["conversation_id"], conversation);

    // The person leaves: DAARION.city hears the chat ended; the puppet leaves.
    nio.ask(json!({"cmd": "leave"})).await;
    let ended = wait_event(&receiver, "matrix.conversation_ended", |e| {
        e["data"]["conversation_id"] == conversation.as_str()
    })
    .await;
    assert_eq!(ended["data"]["sender_id"], s.person_id);
    eventually("the puppet to leave the chat", WAIT, || async {
        let (status, body) = admin
            .get(&format!(
                "/_synapse/admin/v1/rooms/{}/members",
                enc(&matrix_room)
            ))
            .await;
        (status == 200
            && !body["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == s.puppet.as_str()))
        .then_some(())
    })
    .await;
    nio.stop().await;

    // What operators and Prometheus see once all is through: nothing left
    // either way, nothing failed, and every kind of step counted.
    let o = drained(client).await;
    assert_eq!(o["to_matrix"]["failed"], 0, "{o}");
    let metrics = metrics_text(client).await;
    for gauge in [
        r#"matrix_provisioner_outbox_messages{direction="to_matrix",state="pending"}"#,
        r#"matrix_provisioner_outbox_messages{direction="to_matrix",state="failed"}"#,
        r#"matrix_provisioner_outbox_messages{direction="to_city",state="pending"}"#,
    ] {
        assert_eq!(sample(&metrics, gauge), Some(0.0), "{gauge}");
    }
    let told = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            e["data"]["conversation_id"] == conversation.as_str()
                || e["data"]["matrix_room_id"] == matrix_room.as_str()
        })
        .count();
    for (outcome, at_least) in [
        ("conversation_joined", 1),
        ("sent", 2),
        ("edited", edits.len() + 1),
        ("reacted", 1),
        ("reaction_removed", 1),
        ("redacted", 1),
        ("typing", 1),
        ("read", 1),
    ] {
        let series = format!(
            r#"matrix_provisioner_messages_total{{direction="to_matrix",outcome="{outcome}"}}"#
        );
        let n = grew(&metrics_before, &metrics, &series);
        assert!(n >= at_least as f64, "{series} grew by {n}");
    }
    let series = r#"matrix_provisioner_messages_total{direction="to_city",outcome="delivered"}"#;
    let n = grew(&metrics_before, &metrics, series);
    assert!(n >= told as f64, "{series} grew by {n}, {told} told");

    // The stranger's chat never reached DAARION.city.
    let stranger_conversation =
        matrix_provisioner::domain::agent::conversation_id(&stranger_room, &s.agent_id);
    let heard: Vec<Value> = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            e["data"]["matrix_room_id"] == stranger_room.as_str()
                || e["data"]["conversation_id"] == stranger_conversation.as_str()
        })
        .cloned()
        .collect();
    assert!(heard.is_empty(), "{heard:?}");
    receiver.stop().await;
    drop(app);
    drop(turn);
}
on_both_backends!(a_direct_chat_with_an_agent);

/// A streamed answer through a SIGKILL: one message, whose last edit is
/// the final text.
async fn a_streamed_answer_survives_a_kill(backend: Backend) {
    let synapse = shared_synapse();
    let db = TestDb::new(backend).await;
    let mut env = base_env(&db, &synapse);
    env.extend(city_env(backend, None));
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("service.log");
    let mut service = ChildService::start(&env, free_port(), &log).await;
    let s = scene(&service.client, backend, "public").await;
    let answer = unique("stream_");
    let t0 = chrono::Utc::now();
    let part = |i: usize| {
        let words: Vec<String> = (1..=i).map(|w| format!("w{w}")).collect();
        at(
            agent_message(
                &s,
                &answer,
                json!({"body": words.join(" "), "final": i == 40}),
            ),
            t0 + chrono::Duration::milliseconds(i as i64),
        )
    };
    for i in 1..=20 {
        assert_eq!(send_city(&service.client, &part(i)).await.0, 202);
    }
    let client = service.client.clone();
    eventually("the answer's first part to show", WAIT, || async {
        let r = message_record(&client, &answer).await;
        r["event_id"].is_string().then_some(())
    })
    .await;
    service.kill();
    let service = ChildService::start(&env, free_port(), &log).await;
    for i in 21..=40 {
        assert_eq!(send_city(&service.client, &part(i)).await.0, 202);
    }
    let record = wait_message_state(&service.client, &answer, "sent").await;
    assert_eq!(record["final"], true);
    let final_text: Vec<String> = (1..=40).map(|w| format!("w{w}")).collect();
    let final_text = final_text.join(" ");
    let mine: Vec<Value> = room_messages(&Bot::new(backend), &s.matrix_room)
        .await
        .into_iter()
        .filter(|e| e["sender"] == s.puppet.as_str())
        .collect();
    let originals: Vec<&Value> = mine
        .iter()
        .filter(|e| e["content"]["m.relates_to"]["rel_type"] != "m.replace")
        .collect();
    assert_eq!(originals.len(), 1, "one message: {originals:?}");
    let last_edit = mine
        .iter()
        .rfind(|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace")
        .expect("edits");
    assert_eq!(last_edit["content"]["m.new_content"]["body"], final_text);
    drop(service);
}
on_both_backends!(a_streamed_answer_survives_a_kill);
