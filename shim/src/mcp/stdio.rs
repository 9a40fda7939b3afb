//! A guard between the real stdin/stdout and the MCP server.
//!
//! rmcp silently drops lines that are not JSON-RPC; JSON-RPC 2.0 asks for an error response
//! (-32700 for unparsable input, -32600 for an invalid request), and a client that sent garbage
//! deserves to hear about it. The guard checks each incoming line, answers the bad ones itself,
//! and hands the good ones on. Responses from rmcp and from the guard are written to stdout as
//! whole lines, so they never interleave.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::mpsc;

/// Lines longer than this are refused (and skipped) instead of buffered.
pub const MAX_LINE: usize = 8 * 1024 * 1024;
const PIPE_BUFFER: usize = 256 * 1024;

/// Starts the guard on `input`/`output`. Returns the (reader, writer) pair to give rmcp, and the
/// output task, to await after the server ends so its last responses reach stdout.
pub fn guard<R, W>(input: R, output: W) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<()>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (to_server, server_reads) = tokio::io::duplex(PIPE_BUFFER);
    let (server_writes, from_server) = tokio::io::duplex(PIPE_BUFFER);
    let (errors_tx, errors_rx) = mpsc::channel(64);
    tokio::spawn(read_input(input, to_server, errors_tx));
    let writer = tokio::spawn(write_output(from_server, output, errors_rx));
    (server_reads, server_writes, writer)
}

async fn read_input<R: AsyncRead + Unpin>(
    input: R,
    mut to_server: DuplexStream,
    errors: mpsc::Sender<Vec<u8>>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_bounded_line(&mut reader, &mut line).await {
            Ok(LineRead::Eof) | Err(_) => break,
            Ok(LineRead::TooLong) => {
                let message = format!("Invalid Request: message longer than {MAX_LINE} bytes");
                let _ = errors.send(error_line(Value::Null, -32600, &message)).await;
            }
            Ok(LineRead::Line) => match check(&line) {
                Ok(()) => {
                    line.push(b'\n');
                    if to_server.write_all(&line).await.is_err() {
                        break;
                    }
                }
                Err(reply) => {
                    let _ = errors.send(reply).await;
                }
            },
        }
    }
    // EOF on stdin: let the server see it and end the session.
    let _ = to_server.shutdown().await;
}

enum LineRead {
    Line,
    TooLong,
    Eof,
}

/// Reads one line without its newline, never holding more than `MAX_LINE` bytes.
async fn read_bounded_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
) -> std::io::Result<LineRead> {
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if line.is_empty() && !too_long {
                LineRead::Eof
            } else if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(end) => (&available[..end], Some(end + 1)),
            None => (available, None),
        };
        if !too_long {
            if line.len() + chunk.len() > MAX_LINE {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let consumed = done.unwrap_or(available.len());
        reader.consume(consumed);
        if done.is_some() {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

/// Ok when the line should go to the server (a JSON-RPC message, or blank); otherwise the error
/// response to send back.
fn check(line: &[u8]) -> Result<(), Vec<u8>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let value: Value = match serde_json::from_slice(line) {
        Ok(value) => value,
        Err(e) => {
            return Err(error_line(
                Value::Null,
                -32700,
                &format!("Parse error: {e}"),
            ));
        }
    };
    let valid = |v: &Value| {
        v.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
            && (v.get("method").is_some_and(Value::is_string)
                || v.get("result").is_some()
                || v.get("error").is_some())
    };
    match &value {
        Value::Object(_) if valid(&value) => Ok(()),
        Value::Object(map) => {
            let id = map
                .get("id")
                .filter(|id| id.is_string() || id.is_number())
                .cloned()
                .unwrap_or(Value::Null);
            Err(error_line(
                id,
                -32600,
                "Invalid Request: expected a JSON-RPC 2.0 message with \"jsonrpc\": \"2.0\" and a method",
            ))
        }
        // Batches were removed from MCP in 2025-06-18; refuse them clearly rather than silently.
        Value::Array(_) => Err(error_line(
            Value::Null,
            -32600,
            "Invalid Request: JSON-RPC batches are not supported",
        )),
        _ => Err(error_line(
            Value::Null,
            -32600,
            "Invalid Request: expected a JSON object",
        )),
    }
}

fn error_line(id: Value, code: i64, message: &str) -> Vec<u8> {
    let mut line =
        json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
            .to_string()
            .into_bytes();
    line.push(b'\n');
    line
}

async fn write_output<W: AsyncWrite + Unpin>(
    from_server: DuplexStream,
    mut output: W,
    mut errors: mpsc::Receiver<Vec<u8>>,
) {
    let mut lines = BufReader::with_capacity(64 * 1024, from_server);
    let mut line = Vec::new();
    let mut errors_open = true;
    loop {
        tokio::select! {
            read = lines.read_until(b'\n', &mut line) => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                            break;
                        }
                        line.clear();
                    }
                }
            }
            reply = errors.recv(), if errors_open => match reply {
                Some(reply) => {
                    if output.write_all(&reply).await.is_err() || output.flush().await.is_err() {
                        break;
                    }
                }
                None => errors_open = false,
            },
        }
    }
    let _ = output.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(reply: &[u8]) -> i64 {
        let v: Value = serde_json::from_slice(reply).unwrap();
        v["error"]["code"].as_i64().unwrap()
    }

    #[test]
    fn valid_messages_should_pass() {
        assert!(check(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).is_ok());
        assert!(check(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).is_ok());
        assert!(check(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).is_ok());
        assert!(check(b"   ").is_ok());
    }

    #[test]
    fn garbage_should_get_parse_or_request_errors() {
        assert_eq!(code(&check(b"not json").unwrap_err()), -32700);
        assert_eq!(code(&check(b"\xff\xfe\x00").unwrap_err()), -32700);
        assert_eq!(code(&check(b"[1,2]").unwrap_err()), -32600);
        assert_eq!(code(&check(b"42").unwrap_err()), -32600);
        let reply = check(br#"{"id":7,"method":"ping"}"#).unwrap_err();
        assert_eq!(code(&reply), -32600);
        let v: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(v["id"], 7);
    }
}
