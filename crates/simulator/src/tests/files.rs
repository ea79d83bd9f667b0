//! The Files API through the router: uploads, listing, content, deletion,
//! and the errors that name the bad part or line.

use super::*;

/// A multipart body with the given text parts and, if any, a file part.
pub(super) fn multipart(parts: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Request<Body> {
    const BOUNDARY: &str = "simboundary7d3f";
    let mut body = Vec::new();
    for (name, value) in parts {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((filename, bytes)) = file {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
                 content-type: application/jsonl\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    Request::post("/v1/files")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(body))
        .unwrap()
}

pub(super) const SFT_LINE: &str = r#"{"messages":[{"role":"user","content":"mimikatz sekurlsa on DC01"},{"role":"assistant","content":"Threat type: credential_access\nSeverity: high\nRationale: mimikatz."}]}"#;

pub(super) async fn upload(app: &Router, bytes: &[u8]) -> Value {
    let (status, file) = call_json(
        app,
        multipart(&[("purpose", "fine-tune")], Some(("train.jsonl", bytes))),
    )
    .await;
    assert_eq!(status, 200, "{file}");
    file
}

#[tokio::test]
async fn files_are_uploaded_listed_read_and_deleted() {
    let app = router(SimulatorConfig::default());
    let content = format!("{SFT_LINE}\n{SFT_LINE}\n");
    let file = upload(&app, content.as_bytes()).await;
    let mut keys: Vec<&String> = file.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "bytes",
            "created_at",
            "filename",
            "id",
            "object",
            "purpose",
            "status"
        ]
    );
    let id = file["id"].as_str().unwrap();
    assert!(id.starts_with("file-"));
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], content.len());
    assert_eq!(file["filename"], "train.jsonl");
    assert_eq!(file["purpose"], "fine-tune");
    assert_eq!(file["status"], "processed");

    let other = call_json(
        &app,
        multipart(&[("purpose", "batch")], Some(("b.jsonl", b"anything"))),
    )
    .await
    .1;
    let (status, list) = call_json(&app, get("/v1/files")).await;
    assert_eq!(
        (status, &list["object"], &list["has_more"]),
        (200, &json!("list"), &json!(false))
    );
    assert_eq!(list["data"][0]["id"], other["id"], "newest first");
    assert_eq!(list["data"][1], file);
    let (_, only) = call_json(&app, get("/v1/files?purpose=fine-tune")).await;
    assert_eq!(only["data"], json!([file]));
    let (_, first) = call_json(&app, get("/v1/files?limit=1")).await;
    assert_eq!(first["has_more"], true);
    let after = format!("/v1/files?limit=1&after={}", other["id"].as_str().unwrap());
    let (_, second) = call_json(&app, get(&after)).await;
    assert_eq!(
        (&second["data"][0]["id"], &second["has_more"]),
        (&file["id"], &json!(false))
    );

    assert_eq!(
        call_json(&app, get(&format!("/v1/files/{id}"))).await,
        (200, file.clone())
    );
    assert_eq!(
        call(&app, get(&format!("/v1/files/{id}/content"))).await,
        (200, content)
    );
    let delete = Request::delete(format!("/v1/files/{id}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        call_json(&app, delete).await,
        (200, json!({"id": id, "object": "file", "deleted": true}))
    );
    for request in [
        get(&format!("/v1/files/{id}")),
        get(&format!("/v1/files/{id}/content")),
        Request::delete(format!("/v1/files/{id}"))
            .body(Body::empty())
            .unwrap(),
    ] {
        let (status, body) = call(&app, request).await;
        let error = assert_error(status, &body, 404, "invalid_request_error");
        assert_eq!(error["message"], format!("No such File object: {id}"));
    }
}

#[tokio::test]
async fn bad_uploads_name_what_is_wrong() {
    let app = router(SimulatorConfig::default());
    let bad_line =
        format!("{SFT_LINE}\n{{\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}]}}\n");
    for (request, param, says) in [
        (
            multipart(
                &[("purpose", "fine-tune")],
                Some(("t.jsonl", bad_line.as_bytes())),
            ),
            "file",
            "line 2 has no assistant message",
        ),
        (
            multipart(&[("purpose", "fine-tune")], Some(("t.jsonl", b"not json"))),
            "file",
            "line 1 is not valid JSON",
        ),
        (
            multipart(&[("purpose", "fine-tune")], None),
            "file",
            "Missing",
        ),
        (
            multipart(&[], Some(("t.jsonl", SFT_LINE.as_bytes()))),
            "purpose",
            "Missing",
        ),
        (
            multipart(
                &[("purpose", "tuning")],
                Some(("t.jsonl", SFT_LINE.as_bytes())),
            ),
            "purpose",
            "not one of",
        ),
    ] {
        let (status, body) = call(&app, request).await;
        let error = assert_error(status, &body, 400, "invalid_request_error");
        assert_eq!(error["param"], param, "{body}");
        assert!(error["message"].as_str().unwrap().contains(says), "{body}");
    }
    let not_multipart = post("/v1/files", &json!({"purpose": "fine-tune"}), &[]);
    let (status, body) = call(&app, not_multipart).await;
    assert_error(status, &body, 400, "invalid_request_error");
    assert_eq!(call_json(&app, get("/v1/files")).await.1["data"], json!([]));
}
