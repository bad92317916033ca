//! The bus clients, thin shells: connect when needed, publish one event, wait
//! for the target's acknowledgement. Anything that goes wrong is a
//! [`DeliverError`]; the caller forgets the connection ([`Client::reset`])
//! and retries later with the same event (and so the same id).

use std::time::Duration;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::{event_name, outbox::Stored, redact_url, AmqpTarget, NatsTarget, WebhookTarget};

/// The longest one delivery (connecting included) may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Header of the webhooks' signature: `sha256=` and the hex HMAC-SHA256 of the body.
pub const SIGNATURE_HEADER: &str = "X-Rst-Signature";
/// Header of the event's id, in webhooks.
pub const EVENT_ID_HEADER: &str = "X-Rst-Event-Id";
/// Header of the event's name, in webhooks.
pub const EVENT_HEADER: &str = "X-Rst-Event";

/// A failed delivery.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("AMQP: the broker refused the message (nack)")]
    Nacked,
    #[error("webhook: {0}")]
    Http(#[from] reqwest::Error),
    #[error("webhook: the endpoint answered {0}")]
    Status(reqwest::StatusCode),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot serialise the event: {0}")]
    Json(#[from] serde_json::Error),
}

fn nats_error(error: impl std::fmt::Display) -> DeliverError {
    DeliverError::Nats(error.to_string())
}

/// `HMAC-SHA256(secret, body)` as `X-Rst-Signature` carries it: `sha256=HEX`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One target's client.
#[derive(Debug)]
pub enum Client {
    Nats {
        target: NatsTarget,
        context: Option<async_nats::jetstream::Context>,
    },
    Amqp {
        target: AmqpTarget,
        connection: Option<(lapin::Connection, lapin::Channel)>,
    },
    Webhook {
        target: WebhookTarget,
        http: reqwest::Client,
    },
}

impl Client {
    pub fn nats(target: &NatsTarget) -> Client {
        Client::Nats {
            target: target.clone(),
            context: None,
        }
    }

    pub fn amqp(target: &AmqpTarget) -> Client {
        Client::Amqp {
            target: target.clone(),
            connection: None,
        }
    }

    pub fn webhook(target: &WebhookTarget) -> Result<Client, DeliverError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(DELIVERY_TIMEOUT)
            .user_agent(concat!("rst-udp_server/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client::Webhook {
            target: target.clone(),
            http,
        })
    }

    /// Where it publishes, for logs (no credentials).
    pub fn describe(&self) -> String {
        match self {
            Client::Nats { target, .. } => format!(
                "{} subjects {}.EVENT (stream {})",
                redact_url(&target.url.0),
                target.subject_prefix,
                target.stream
            ),
            Client::Amqp { target, .. } => format!(
                "{} exchange {} routing keys {}.EVENT",
                redact_url(&target.url.0),
                target.exchange,
                target.routing_prefix
            ),
            Client::Webhook { target, .. } => redact_url(&target.url.0),
        }
    }

    /// Forgets the connection after a failure: the next delivery connects anew.
    pub fn reset(&mut self) {
        match self {
            Client::Nats { context, .. } => *context = None,
            Client::Amqp { connection, .. } => {
                if let Some((connection, _)) = connection.take() {
                    // Closing is best effort: the broker may be gone.
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            CONNECT_TIMEOUT,
                            connection.close(0, "reconnecting"),
                        )
                        .await;
                    });
                }
            }
            Client::Webhook { .. } => {}
        }
    }

    /// Publishes `stored` and waits for the target to acknowledge it.
    pub async fn deliver(&mut self, stored: &Stored) -> Result<(), DeliverError> {
        let body = serde_json::to_vec(&stored.event)?;
        match tokio::time::timeout(DELIVERY_TIMEOUT, self.publish(stored, body)).await {
            Ok(result) => result,
            Err(_) => Err(DeliverError::Timeout(DELIVERY_TIMEOUT)),
        }
    }

    async fn publish(&mut self, stored: &Stored, body: Vec<u8>) -> Result<(), DeliverError> {
        let name = event_name(&stored.event);
        match self {
            Client::Nats { target, context } => {
                let context = match context {
                    Some(context) => context,
                    None => context.insert(connect_nats(target).await?),
                };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", stored.id.as_str());
                let subject = format!("{}.{name}", target.subject_prefix);
                context
                    .publish_with_headers(subject, headers, bytes::Bytes::from(body))
                    .await
                    .map_err(nats_error)?
                    .await
                    .map_err(nats_error)?;
                Ok(())
            }
            Client::Amqp { target, connection } => {
                let (_, channel) = match connection {
                    Some(connection) => connection,
                    None => connection.insert(connect_amqp(target).await?),
                };
                let properties = lapin::BasicProperties::default()
                    .with_message_id(stored.id.clone().into())
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_type(name.clone().into());
                let confirmation = channel
                    .basic_publish(
                        &target.exchange,
                        &format!("{}.{name}", target.routing_prefix),
                        lapin::options::BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await?
                    .await?;
                if confirmation.is_nack() {
                    return Err(DeliverError::Nacked);
                }
                Ok(())
            }
            Client::Webhook { target, http } => {
                let response = http
                    .post(&target.url.0)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(EVENT_ID_HEADER, &stored.id)
                    .header(EVENT_HEADER, &name)
                    .header(
                        SIGNATURE_HEADER,
                        signature(target.secret.0.as_bytes(), &body),
                    )
                    .body(body)
                    .send()
                    .await?;
                let status = response.status();
                if !status.is_success() {
                    return Err(DeliverError::Status(status));
                }
                Ok(())
            }
        }
    }
}

async fn connect_nats(target: &NatsTarget) -> Result<async_nats::jetstream::Context, DeliverError> {
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .name("rst udp_server");
    if let Some(path) = &target.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| DeliverError::Nats(format!("credentials-file {}: {e}", path.display())))?;
    }
    let client = options
        .connect(target.url.0.as_str())
        .await
        .map_err(nats_error)?;
    let context = async_nats::jetstream::new(client);
    // The stream that keeps the events: made when missing, left as it is
    // when it exists (its owner may have set limits or replicas).
    context
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: target.stream.clone(),
            subjects: vec![format!("{}.>", target.subject_prefix)],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(nats_error)?;
    Ok(context)
}

async fn connect_amqp(
    target: &AmqpTarget,
) -> Result<(lapin::Connection, lapin::Channel), DeliverError> {
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name("rst udp_server".into());
    let connection = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        lapin::Connection::connect(&target.url.0, properties),
    )
    .await
    {
        Ok(connection) => connection?,
        Err(_) => return Err(DeliverError::Timeout(CONNECT_TIMEOUT)),
    };
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    channel
        .exchange_declare(
            &target.exchange,
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    Ok((connection, channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
