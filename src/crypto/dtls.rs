//! DTLS 1.2 on OpenSSL behind str0m's `DtlsInstance`, so peers with RSA certificates
//! (GStreamer's webrtcbin, older libwebrtc builds) connect as well as ECDSA ones.
//!
//! OpenSSL sees a [`DatagramPipe`] instead of a socket: str0m pushes each received
//! datagram in, OpenSSL reads one per read and writes one datagram per write, and
//! `poll_output` hands the written ones back to str0m. No I/O happens here.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::srtp::SrtpProfileId;
use openssl::ssl::{ErrorCode, Ssl, SslContext, SslMethod, SslOptions, SslStream, SslVerifyMode};
use openssl::x509::{X509NameBuilder, X509};
use str0m::crypto::dtls::{DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider};
use str0m::crypto::dtls::{DtlsVersion, KeyingMaterial, ProtocolVersion, SrtpProfile};
use str0m::crypto::CryptoError;

/// ECDHE only (forward secrecy), AEAD first; the CBC suites stay for older stacks.
/// Both certificate kinds: the suite's signature follows the server's certificate.
const CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:\
ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA";

/// The SRTP profiles offered, best first (RFC 5764, RFC 7714).
const SRTP_PROFILES: &str = "SRTP_AEAD_AES_128_GCM:SRTP_AEAD_AES_256_GCM:SRTP_AES128_CM_SHA1_80";

/// RFC 5764 section 4.2: the exporter label for DTLS-SRTP keys.
const DTLS_SRTP_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// How often a running handshake is driven without input, so OpenSSL retransmits a
/// lost flight when its own timer (1 s, doubling) has run out.
const HANDSHAKE_TICK: Duration = Duration::from_millis(100);

/// Received datagrams waiting for OpenSSL. A handshake flight is a handful of
/// datagrams; more than this unread means a flood, and the excess is dropped.
const MAX_RECEIVED_QUEUE: usize = 64;

/// The largest DTLS record plaintext (RFC 6347: 2^14) plus room for OpenSSL's overhead.
const READ_BUFFER: usize = 16 * 1024 + 2048;

/// What OpenSSL reads from and writes to: one datagram per call either way.
#[derive(Default)]
struct DatagramPipe {
    received: VecDeque<Vec<u8>>,
    to_send: VecDeque<Vec<u8>>,
}

impl DatagramPipe {
    fn push_received(&mut self, datagram: &[u8]) {
        if self.received.len() < MAX_RECEIVED_QUEUE {
            self.received.push_back(datagram.to_vec());
        }
    }
}

impl Read for DatagramPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(datagram) = self.received.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        // A datagram longer than OpenSSL's buffer is cut, as a socket would; the
        // record layer then discards it.
        let len = datagram.len().min(buf.len());
        buf[..len].copy_from_slice(&datagram[..len]);
        Ok(len)
    }
}

impl Write for DatagramPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.to_send.push_back(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the instance has to tell str0m, in the order str0m needs it: the peer's
/// certificate (str0m checks its fingerprint) before the keys and `Connected`.
enum Event {
    PeerCert(Vec<u8>),
    Keys(KeyingMaterial, SrtpProfile),
    Connected,
    ApplicationData(Vec<u8>),
    CloseNotify,
}

enum Stage {
    /// Made, not yet told which side of the handshake it plays.
    Created(Ssl),
    /// The server side before the first ClientHello: nothing to retransmit yet.
    Listening(SslStream<DatagramPipe>),
    Handshaking(SslStream<DatagramPipe>),
    Connected(SslStream<DatagramPipe>),
    /// The handshake failed or the stream could not be set up; everything is refused.
    Failed,
}

/// One DTLS association (one per `Rtc`).
pub struct OpensslDtls {
    stage: Stage,
    active: bool,
    events: VecDeque<Event>,
    /// Datagrams OpenSSL wrote, taken out of its pipe after each call into it, so
    /// that polling (str0m polls on every output) does not call into OpenSSL.
    outgoing: VecDeque<Vec<u8>>,
    last_now: Instant,
    close_sent: bool,
    close_received: bool,
}

impl fmt::Debug for OpensslDtls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match self.stage {
            Stage::Created(_) => "created",
            Stage::Listening(_) => "listening",
            Stage::Handshaking(_) => "handshaking",
            Stage::Connected(_) => "connected",
            Stage::Failed => "failed",
        };
        f.debug_struct("OpensslDtls")
            .field("stage", &stage)
            .field("active", &self.active)
            .finish()
    }
}

fn failure(operation: dimpl::CryptoOperation) -> DtlsImplError {
    DtlsImplError::CryptoError(dimpl::CryptoError::OperationFailed(operation))
}

impl OpensslDtls {
    fn new(context: &SslContext, mtu: usize, now: Instant) -> Result<Self, ErrorStack> {
        let mut ssl = Ssl::new(context)?;
        ssl.set_mtu(u32::try_from(mtu).unwrap_or(u32::MAX))?;
        Ok(OpensslDtls {
            stage: Stage::Created(ssl),
            active: false,
            events: VecDeque::new(),
            outgoing: VecDeque::new(),
            last_now: now,
            close_sent: false,
            close_received: false,
        })
    }

    fn stream_mut(&mut self) -> Option<&mut SslStream<DatagramPipe>> {
        match &mut self.stage {
            Stage::Listening(stream) | Stage::Handshaking(stream) | Stage::Connected(stream) => {
                Some(stream)
            }
            Stage::Created(_) | Stage::Failed => None,
        }
    }

    /// Takes what OpenSSL wrote into its pipe (see `outgoing`).
    fn collect_outgoing(&mut self) {
        if let Stage::Listening(stream) | Stage::Handshaking(stream) | Stage::Connected(stream) =
            &mut self.stage
        {
            self.outgoing.append(&mut stream.get_mut().to_send);
        }
    }

    fn is_handshaking(&self) -> bool {
        matches!(self.stage, Stage::Handshaking(_))
    }

    /// Runs the handshake as far as the queued datagrams take it.
    fn drive_handshake(&mut self) -> Result<(), DtlsImplError> {
        let mut stream = match std::mem::replace(&mut self.stage, Stage::Failed) {
            Stage::Listening(stream) | Stage::Handshaking(stream) => stream,
            other => {
                self.stage = other;
                return Ok(());
            }
        };
        match stream.do_handshake() {
            Ok(()) => match handshake_results(&stream) {
                Ok((peer_cert, keys, profile)) => {
                    tracing::debug!(version = stream.ssl().version_str(), %profile, "DTLS connected");
                    self.events.push_back(Event::PeerCert(peer_cert));
                    self.events.push_back(Event::Keys(keys, profile));
                    self.events.push_back(Event::Connected);
                    self.stage = Stage::Connected(stream);
                    // Records that came in with the peer's last flight (an early SCTP INIT).
                    self.read_application_data()
                }
                Err(reason) => {
                    tracing::info!(
                        reason,
                        "DTLS handshake finished without what DTLS-SRTP needs"
                    );
                    self.outgoing.append(&mut stream.get_mut().to_send);
                    Err(failure(dimpl::CryptoOperation::CompleteKeyExchange))
                }
            },
            Err(error) if error.code() == ErrorCode::WANT_READ => {
                self.stage = Stage::Handshaking(stream);
                Ok(())
            }
            Err(error) => {
                tracing::info!(%error, "DTLS handshake failed");
                // The alert OpenSSL wrote still goes out, so the peer learns why.
                self.outgoing.append(&mut stream.get_mut().to_send);
                Err(failure(dimpl::CryptoOperation::CompleteKeyExchange))
            }
        }
    }

    /// Decrypts every queued record of a connected stream into events.
    fn read_application_data(&mut self) -> Result<(), DtlsImplError> {
        let Stage::Connected(stream) = &mut self.stage else {
            return Ok(());
        };
        let mut buf = vec![0_u8; READ_BUFFER];
        loop {
            match stream.ssl_read(&mut buf) {
                Ok(len) => self
                    .events
                    .push_back(Event::ApplicationData(buf[..len].to_vec())),
                Err(error) if error.code() == ErrorCode::WANT_READ => return Ok(()),
                Err(error) if error.code() == ErrorCode::ZERO_RETURN => {
                    if !self.close_received {
                        self.close_received = true;
                        // RFC 5246 section 7.2.1: answer close_notify with our own.
                        if !self.close_sent {
                            let _ = stream.shutdown();
                            self.close_sent = true;
                        }
                        self.events.push_back(Event::CloseNotify);
                    }
                    return Ok(());
                }
                Err(error) => {
                    tracing::debug!(%error, "DTLS read failed");
                    return Err(failure(dimpl::CryptoOperation::Decrypt));
                }
            }
        }
    }
}

/// The peer's certificate, the SRTP keys and their profile, once the handshake is done.
fn handshake_results(
    stream: &SslStream<DatagramPipe>,
) -> Result<(Vec<u8>, KeyingMaterial, SrtpProfile), &'static str> {
    let ssl = stream.ssl();
    let peer_cert = ssl
        .peer_certificate()
        .and_then(|cert| cert.to_der().ok())
        .ok_or("no peer certificate")?;
    let profile = match ssl.selected_srtp_profile().map(|profile| profile.id()) {
        Some(SrtpProfileId::SRTP_AES128_CM_SHA1_80) => SrtpProfile::AES128_CM_SHA1_80,
        Some(SrtpProfileId::SRTP_AEAD_AES_128_GCM) => SrtpProfile::AEAD_AES_128_GCM,
        Some(SrtpProfileId::SRTP_AEAD_AES_256_GCM) => SrtpProfile::AEAD_AES_256_GCM,
        _ => return Err("no SRTP profile in common"),
    };
    let mut keys = vec![0_u8; profile.keying_material_len()];
    ssl.export_keying_material(&mut keys, DTLS_SRTP_LABEL, None)
        .map_err(|_| "the SRTP keys could not be exported")?;
    Ok((peer_cert, KeyingMaterial::new(&keys), profile))
}

/// Copies `bytes` into `buf` for an output that borrows it, or says how much room it needs.
fn lend<'a>(buf: &'a mut [u8], bytes: &[u8]) -> Result<&'a [u8], usize> {
    let target = buf.get_mut(..bytes.len()).ok_or(bytes.len())?;
    target.copy_from_slice(bytes);
    Ok(target)
}

impl DtlsInstance for OpensslDtls {
    fn set_active(&mut self, active: bool) {
        let Stage::Created(mut ssl) = std::mem::replace(&mut self.stage, Stage::Failed) else {
            tracing::warn!("DTLS role set twice; the first one stands");
            return;
        };
        self.active = active;
        if active {
            ssl.set_connect_state();
        } else {
            ssl.set_accept_state();
        }
        match SslStream::new(ssl, DatagramPipe::default()) {
            Ok(stream) if active => {
                self.stage = Stage::Handshaking(stream);
                // The ClientHello goes out now; errors surface on the next input.
                let _ = self.drive_handshake();
                self.collect_outgoing();
            }
            Ok(stream) => self.stage = Stage::Listening(stream),
            Err(error) => tracing::warn!(%error, "DTLS stream could not be set up"),
        }
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        let Some(stream) = self.stream_mut() else {
            return Err(DtlsImplError::ConnectionClosed);
        };
        // str0m hands in an empty packet to kick a new client; to OpenSSL an empty
        // read would be end of stream, so it only drives the state machine.
        if !packet.is_empty() {
            stream.get_mut().push_received(packet);
        }
        let result = match self.stage {
            Stage::Connected(_) => self.read_application_data(),
            _ => self.drive_handshake(),
        };
        self.collect_outgoing();
        result
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        if let Some(datagram) = self.outgoing.pop_front() {
            return match lend(buf, &datagram) {
                Ok(bytes) => DtlsOutput::Packet(bytes),
                Err(needed) => {
                    self.outgoing.push_front(datagram);
                    DtlsOutput::BufferTooSmall { needed }
                }
            };
        }
        match self.events.pop_front() {
            Some(Event::PeerCert(der)) => match lend(buf, &der) {
                Ok(bytes) => DtlsOutput::PeerCert(bytes),
                Err(needed) => {
                    self.events.push_front(Event::PeerCert(der));
                    DtlsOutput::BufferTooSmall { needed }
                }
            },
            Some(Event::Keys(keys, profile)) => DtlsOutput::KeyingMaterial(keys, profile),
            Some(Event::Connected) => DtlsOutput::Connected,
            Some(Event::ApplicationData(data)) => match lend(buf, &data) {
                Ok(bytes) => DtlsOutput::ApplicationData(bytes),
                Err(needed) => {
                    self.events.push_front(Event::ApplicationData(data));
                    DtlsOutput::BufferTooSmall { needed }
                }
            },
            Some(Event::CloseNotify) => DtlsOutput::CloseNotify,
            None if self.is_handshaking() => DtlsOutput::Timeout(self.last_now + HANDSHAKE_TICK),
            // Nothing is due: OpenSSL keeps no timer once connected.
            None => DtlsOutput::Timeout(self.last_now + Duration::from_secs(3600)),
        }
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.last_now = now;
        if !self.is_handshaking() {
            return Ok(());
        }
        let result = self.drive_handshake();
        self.collect_outgoing();
        result
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        let Stage::Connected(stream) = &mut self.stage else {
            // Not accepted yet: str0m keeps it and retries once connected.
            return Ok(0);
        };
        if data.is_empty() {
            return Ok(0);
        }
        let result = match stream.ssl_write(data) {
            Ok(written) => Ok(written),
            Err(error) => {
                tracing::debug!(%error, "DTLS write failed");
                Err(failure(dimpl::CryptoOperation::Encrypt))
            }
        };
        self.collect_outgoing();
        result
    }

    fn is_active(&self) -> bool {
        self.active
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        matches!(self.stage, Stage::Connected(_)).then_some(ProtocolVersion::DTLS1_2)
    }

    fn is_closing(&self) -> bool {
        self.close_sent || self.close_received
    }

    fn is_closed(&self) -> bool {
        self.close_sent && self.outgoing.is_empty()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        if let Stage::Connected(stream) = &mut self.stage {
            if !self.close_sent {
                let _ = stream.shutdown();
            }
        }
        self.close_sent = true;
        self.collect_outgoing();
        Ok(())
    }
}

/// Makes [`OpensslDtls`] instances, all sharing one `SslContext` per certificate.
pub struct OpensslDtlsProvider {
    /// The context of the last certificate seen: the server has one for the process.
    context: std::sync::Mutex<Option<(Vec<u8>, SslContext)>>,
}

impl fmt::Debug for OpensslDtlsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpensslDtlsProvider")
    }
}

impl OpensslDtlsProvider {
    pub const fn new() -> Self {
        OpensslDtlsProvider {
            context: std::sync::Mutex::new(None),
        }
    }

    fn context_for(&self, cert: &DtlsCert) -> Result<SslContext, ErrorStack> {
        // Poisoning cannot leave the cache half-written: it is replaced whole.
        let mut cached = self
            .context
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((der, context)) = cached.as_ref() {
            if *der == cert.certificate {
                return Ok(context.clone());
            }
        }
        let context = build_context(cert)?;
        *cached = Some((cert.certificate.clone(), context.clone()));
        Ok(context)
    }
}

impl Default for OpensslDtlsProvider {
    fn default() -> Self {
        Self::new()
    }
}

fn build_context(cert: &DtlsCert) -> Result<SslContext, ErrorStack> {
    let mut context = SslContext::builder(SslMethod::dtls())?;
    context.set_cipher_list(CIPHERS)?;
    context.set_tlsext_use_srtp(SRTP_PROFILES)?;
    // Both sides must show a certificate; any self-signed one passes here because
    // str0m compares its fingerprint with the one in the SDP (RFC 8827 section 6.5).
    context.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        |_preverified, _store| true,
    );
    let certificate = X509::from_der(&cert.certificate)?;
    let private_key = PKey::private_key_from_der(&cert.private_key)?;
    context.set_certificate(&certificate)?;
    context.set_private_key(&private_key)?;
    context.check_private_key()?;
    // DTLS 1.0 is obsolete (RFC 8996); the MTU comes from str0m, not from a socket.
    context.set_options(
        SslOptions::SINGLE_ECDH_USE | SslOptions::NO_DTLSV1 | SslOptions::NO_QUERY_MTU,
    );
    Ok(context.build())
}

/// A self-signed ECDSA P-256 certificate with a random serial, keys and serial from
/// OpenSSL's CSPRNG. ECDSA is what every WebRTC stack accepts and the fastest to sign with.
pub fn generate_certificate() -> Result<DtlsCert, ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "switchboard")?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;

    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    builder.set_serial_number(serial.to_asn1_integer()?.as_ref())?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    // Valid from a day ago so a peer with a clock a little behind still accepts it.
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let a_day_ago = i64::try_from(unix_now.saturating_sub(86_400)).unwrap_or(0);
    builder.set_not_before(Asn1Time::from_unix(a_day_ago)?.as_ref())?;
    builder.set_not_after(Asn1Time::days_from_now(30)?.as_ref())?;
    builder.set_pubkey(&key)?;
    builder.sign(&key, MessageDigest::sha256())?;
    Ok(DtlsCert {
        certificate: builder.build().to_der()?,
        private_key: key.private_key_to_der()?,
    })
}

impl DtlsProvider for OpensslDtlsProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        generate_certificate()
            .map_err(|error| tracing::error!(%error, "DTLS certificate generation failed"))
            .ok()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        if dtls_version == DtlsVersion::Dtls13 {
            return Err(CryptoError::Other(
                "DTLS 1.3 is not available with OpenSSL's DTLS".into(),
            ));
        }
        let mtu = mtu.unwrap_or(str0m::DATAGRAM_MTU_TARGET);
        let context = self
            .context_for(cert)
            .map_err(|error| CryptoError::Other(format!("DTLS context: {error}")))?;
        let instance = OpensslDtls::new(&context, mtu, now)
            .map_err(|error| CryptoError::Other(format!("DTLS instance: {error}")))?;
        Ok(Box::new(instance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsa_certificate() -> DtlsCert {
        let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa")).expect("pkey");
        let mut name = X509NameBuilder::new().expect("name");
        name.append_entry_by_text("CN", "rsa").expect("cn");
        let name = name.build();
        let mut builder = X509::builder().expect("builder");
        builder.set_version(2).expect("version");
        builder.set_subject_name(&name).expect("subject");
        builder.set_issuer_name(&name).expect("issuer");
        let now = Asn1Time::days_from_now(0).expect("now");
        let later = Asn1Time::days_from_now(1).expect("later");
        builder.set_not_before(&now).expect("not before");
        builder.set_not_after(&later).expect("not after");
        builder.set_pubkey(&key).expect("pubkey");
        builder.sign(&key, MessageDigest::sha256()).expect("sign");
        DtlsCert {
            certificate: builder.build().to_der().expect("der"),
            private_key: key.private_key_to_der().expect("key der"),
        }
    }

    fn instance(cert: &DtlsCert, now: Instant) -> Box<dyn DtlsInstance> {
        OpensslDtlsProvider::new()
            .new_dtls(cert, now, DtlsVersion::Dtls12, Some(1200))
            .expect("instance")
    }

    /// Everything `from` has to say: the datagrams it sends and the events it reports.
    fn drain(from: &mut dyn DtlsInstance) -> (Vec<Vec<u8>>, Vec<String>) {
        let mut buf = vec![0_u8; 2048];
        let mut datagrams = Vec::new();
        let mut events = Vec::new();
        loop {
            match from.poll_output(&mut buf) {
                DtlsOutput::Packet(bytes) => datagrams.push(bytes.to_vec()),
                DtlsOutput::Timeout(_) => return (datagrams, events),
                DtlsOutput::PeerCert(der) => events.push(format!("cert {}", der.len())),
                DtlsOutput::KeyingMaterial(keys, profile) => {
                    events.push(format!("keys {} {profile}", keys.len()))
                }
                DtlsOutput::Connected => events.push("connected".into()),
                DtlsOutput::ApplicationData(data) => {
                    events.push(format!("data {}", String::from_utf8_lossy(data)))
                }
                other => events.push(format!("{other:?}")),
            }
        }
    }

    /// Runs a handshake between a client with `client_cert` and a server with
    /// `server_cert`, dropping nothing; returns each side's events.
    fn handshake(client_cert: &DtlsCert, server_cert: &DtlsCert) -> (Vec<String>, Vec<String>) {
        let now = Instant::now();
        let mut client = instance(client_cert, now);
        let mut server = instance(server_cert, now);
        client.set_active(true);
        server.set_active(false);
        let (mut client_events, mut server_events) = (Vec::new(), Vec::new());
        for _round in 0..20 {
            let (to_server, events) = drain(client.as_mut());
            client_events.extend(events);
            for datagram in &to_server {
                server
                    .handle_packet(datagram)
                    .expect("server takes the datagram");
            }
            let (to_client, events) = drain(server.as_mut());
            server_events.extend(events);
            for datagram in &to_client {
                client
                    .handle_packet(datagram)
                    .expect("client takes the datagram");
            }
            if to_server.is_empty() && to_client.is_empty() {
                break;
            }
        }
        (client_events, server_events)
    }

    #[test]
    fn ecdsa_and_rsa_certificates_complete_the_handshake() {
        let ecdsa = generate_certificate().expect("ecdsa certificate");
        let rsa = rsa_certificate();
        for (client, server) in [
            (&ecdsa, &ecdsa),
            (&rsa, &ecdsa),
            (&ecdsa, &rsa),
            (&rsa, &rsa),
        ] {
            let (client_events, server_events) = handshake(client, server);
            for events in [&client_events, &server_events] {
                assert_eq!(events.len(), 3, "{events:?}");
                assert!(events[0].starts_with("cert "), "{events:?}");
                assert!(events[1].starts_with("keys "), "{events:?}");
                assert_eq!(events[2], "connected", "{events:?}");
            }
            // Both sides export the same keys: same profile, same length.
            assert_eq!(client_events[1], server_events[1]);
        }
    }

    #[test]
    fn a_lost_client_hello_is_sent_again_when_openssl_s_timer_runs_out() {
        let cert = generate_certificate().expect("certificate");
        let start = Instant::now();
        let mut client = instance(&cert, start);
        client.set_active(true);
        let (first, _) = drain(client.as_mut());
        assert_eq!(first.len(), 1, "one ClientHello");
        // OpenSSL's first retransmission timer is 1 s of real time.
        let deadline = start + Duration::from_secs(5);
        let resent = loop {
            assert!(Instant::now() < deadline, "no retransmission within 5 s");
            std::thread::park_timeout(HANDSHAKE_TICK);
            client.handle_timeout(Instant::now()).expect("timeout");
            let (datagrams, _) = drain(client.as_mut());
            if !datagrams.is_empty() {
                break datagrams;
            }
        };
        // The same ClientHello in a record with the next sequence number (bytes 5..11).
        assert_eq!(resent.len(), 1);
        assert_eq!(
            resent[0][13..],
            first[0][13..],
            "the same ClientHello again"
        );
    }

    #[test]
    fn garbage_never_panics_and_a_good_handshake_still_follows() {
        let cert = generate_certificate().expect("certificate");
        let now = Instant::now();
        let mut server = instance(&cert, now);
        server.set_active(false);
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![22],
            vec![22, 0xfe, 0xfd],
            vec![22; 13],
            vec![0xff; 70_000],
            // A record header claiming more than is there.
            vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3],
        ];
        for _ in 0..200 {
            let len = (next() % 300) as usize;
            let mut datagram: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = datagram.first_mut() {
                *first = 20 + (*first % 44); // the DTLS content-type range str0m passes on
            }
            garbage.push(datagram);
        }
        for datagram in &garbage {
            // An error is fine (the session would end); a panic or a hang is not.
            let _ = server.handle_packet(datagram);
            let _ = drain(server.as_mut());
        }
        // Garbage to a fresh server, then a real client: the handshake completes.
        let mut server = instance(&cert, now);
        server.set_active(false);
        for datagram in garbage.iter().take(3) {
            server
                .handle_packet(datagram)
                .expect("a short datagram is discarded");
        }
        let mut client = instance(&cert, now);
        client.set_active(true);
        let mut client_events = Vec::new();
        for _round in 0..20 {
            let (to_server, events) = drain(client.as_mut());
            client_events.extend(events);
            for datagram in &to_server {
                let _ = server.handle_packet(datagram);
            }
            let (to_client, _) = drain(server.as_mut());
            for datagram in &to_client {
                client
                    .handle_packet(datagram)
                    .expect("client takes the datagram");
            }
        }
        assert!(
            client_events.iter().any(|event| event == "connected"),
            "the handshake completes after the garbage: {client_events:?}"
        );
    }

    #[test]
    fn application_data_flows_both_ways_once_connected() {
        let cert = generate_certificate().expect("certificate");
        let now = Instant::now();
        let mut client = instance(&cert, now);
        let mut server = instance(&cert, now);
        assert_eq!(client.send_application_data(b"early").expect("queued"), 0);
        client.set_active(true);
        server.set_active(false);
        for _round in 0..10 {
            let (to_server, _) = drain(client.as_mut());
            to_server
                .iter()
                .for_each(|d| server.handle_packet(d).expect("server"));
            let (to_client, _) = drain(server.as_mut());
            to_client
                .iter()
                .for_each(|d| client.handle_packet(d).expect("client"));
        }
        assert_eq!(client.send_application_data(b"hello").expect("sent"), 5);
        let (to_server, _) = drain(client.as_mut());
        to_server
            .iter()
            .for_each(|d| server.handle_packet(d).expect("server"));
        let (_, events) = drain(server.as_mut());
        assert!(events.contains(&"data hello".to_string()), "{events:?}");

        client.close().expect("close");
        let (to_server, _) = drain(client.as_mut());
        to_server
            .iter()
            .for_each(|d| server.handle_packet(d).expect("server"));
        let (_, events) = drain(server.as_mut());
        assert!(events.iter().any(|e| e == "CloseNotify"), "{events:?}");
        assert!(client.is_closed());
    }
}
