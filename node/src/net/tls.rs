//! A node's TCP connections are secured by libp2p's TLS 1.3 handshake
//! (`/tls/1.0.0`), with the cipher chosen for speed.
//!
//! The handshake is the one every libp2p TLS peer speaks: a self-signed
//! certificate per node whose libp2p extension carries the node key and its
//! signature over the certificate key, checked both ways. What differs from
//! libp2p's own configuration is the order of the cipher suites this side
//! offers when it dials. libp2p puts ChaCha20-Poly1305 first; on a CPU with
//! AES instructions AES-128-GCM is several times cheaper, and payloads are
//! tens or hundreds of megabytes, so a node that has them offers AES-GCM
//! first (the listener follows the dialer's order).
//!
//! ```
//! use p2ptrain_node::net::{keypair, tls::Tls};
//! use p2ptrain_protocol::SigningKey;
//!
//! let tls = Tls::new(&keypair(&SigningKey::from_bytes(&[5; 32]))?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use futures_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::Keypair;
use libp2p::tls::certificate;
use libp2p::PeerId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
    SupportedCipherSuite,
};

/// The protocol id: libp2p's TLS handshake.
const PROTOCOL: &str = "/tls/1.0.0";

/// The application protocol libp2p's TLS handshake names.
const ALPN: &[u8] = b"libp2p";

/// Why a TLS configuration cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The node's certificate could not be generated.
    #[error("certificate: {0}")]
    Certificate(#[from] certificate::GenError),
    /// rustls refused the configuration.
    #[error("configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The TLS exchange itself failed (a certificate refused, a closed
    /// socket, a protocol error).
    #[error("TLS handshake: {0}")]
    Tls(#[from] std::io::Error),
    /// The peer's certificate is not a libp2p one.
    #[error("peer certificate: {0}")]
    Certificate(#[from] certificate::ParseError),
    /// The handshake ended without exactly one peer certificate.
    #[error("the peer presented no single certificate")]
    NoCertificate,
}

/// The security upgrade of a node's TCP connections: libp2p TLS 1.3,
/// AES-GCM first where the CPU has AES instructions.
#[derive(Clone)]
pub struct Tls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl Tls {
    /// The configuration for a node with libp2p identity `key`.
    ///
    /// # Errors
    ///
    /// [`TlsError`] if the certificate cannot be made or rustls refuses
    /// the configuration.
    pub fn new(key: &Keypair) -> Result<Self, TlsError> {
        let (certificate, certificate_key) = certificate::generate(key)?;
        let provider = Arc::new(CryptoProvider {
            cipher_suites: cipher_suites(aes_in_hardware()),
            ..aws_lc_rs::default_provider()
        });
        // The certificate is handed over as is: rustls' own checks of a
        // certificate refuse libp2p's critical extension.
        let signer = provider.key_provider.load_private_key(certificate_key)?;
        let own = Arc::new(SingleCertAndKey::from(CertifiedKey::new(
            vec![certificate],
            signer,
        )));
        let verifier = Arc::new(PeerCertificate);
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(own.clone());
        client.alpn_protocols = vec![ALPN.to_vec()];
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(own);
        server.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// The rustls configuration of this side's outbound connections, for
    /// measuring TLS on its own (as `bench_transfer` does).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }

    /// The rustls configuration of this side's inbound connections.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }
}

/// The server name a dialer gives rustls: libp2p's handshake sends none,
/// and an unspecified IP address keeps rustls from sending one.
pub fn dial_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into())
}

/// The TLS 1.3 suites in the order this side offers them.
fn cipher_suites(aes: bool) -> Vec<SupportedCipherSuite> {
    use aws_lc_rs::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    if aes {
        vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ]
    } else {
        vec![
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ]
    }
}

/// Whether the CPU computes AES and GCM's carry-less products in hardware.
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl UpgradeInfo for Tls {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for Tls
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = HandshakeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = TlsAcceptor::from(self.server).accept(socket).await?;
            let peer = peer_of(stream.get_ref().1.peer_certificates())?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Tls
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = HandshakeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = TlsConnector::from(self.client)
                .connect(dial_name(), socket)
                .await?;
            // The swarm checks this id against the one it dialed.
            let peer = peer_of(stream.get_ref().1.peer_certificates())?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

/// The peer id in the single certificate a finished handshake holds.
fn peer_of(certificates: Option<&[CertificateDer<'_>]>) -> Result<PeerId, HandshakeError> {
    match certificates {
        Some([only]) => Ok(certificate::parse(only)?.peer_id()),
        _ => Err(HandshakeError::NoCertificate),
    }
}

/// Checks a peer's certificate both ways (as server and as client), as
/// libp2p's handshake requires: exactly one certificate, self-signed, whose
/// libp2p extension holds a valid signature of its key by the node key; and
/// the handshake signed by that certificate's key.
#[derive(Debug)]
struct PeerCertificate;

impl PeerCertificate {
    fn check(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "a libp2p peer presents exactly one certificate".into(),
            ));
        }
        certificate::parse(end_entity).map_err(refused)?;
        Ok(())
    }

    fn check_signature(
        message: &[u8],
        end_entity: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        certificate::parse(end_entity)
            .map_err(refused)?
            .verify_signature(signed.scheme, message, signed.signature())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }

    /// The schemes a libp2p certificate may sign with, elliptic curves first.
    fn schemes() -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}

fn refused(error: certificate::ParseError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// Only TLS 1.3 is configured, so a TLS 1.2 signature is never asked for;
/// it is refused rather than trusted if it ever is.
fn tls12_refused() -> rustls::Error {
    rustls::Error::General("libp2p's handshake is TLS 1.3 only".into())
}

/// The handshake-signature methods, which rustls declares alike in both
/// verifier traits.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _signed: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(tls12_refused())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            signed: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Self::check_signature(message, cert, signed)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            Self::schemes()
        }
    };
}

impl ServerCertVerifier for PeerCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ClientCertVerifier for PeerCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::tcp::tokio::TcpStream;
    use rustls::CipherSuite;

    use crate::net::loopback::{pattern, round_trip, socket_pair};

    fn identity(seed: u8) -> Keypair {
        crate::net::keypair(&p2ptrain_protocol::SigningKey::from_bytes(&[seed; 32])).unwrap()
    }

    fn suite(stream: &TlsStream<TcpStream>) -> Option<CipherSuite> {
        let state = match stream {
            TlsStream::Client(s) => s.get_ref().1.negotiated_cipher_suite(),
            TlsStream::Server(s) => s.get_ref().1.negotiated_cipher_suite(),
        };
        state.map(|s| s.suite())
    }

    fn preferred() -> CipherSuite {
        if aes_in_hardware() {
            CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        }
    }

    #[tokio::test]
    async fn dialing_libp2ps_own_tls_names_both_peers_in_this_sides_cipher() {
        let (ours, theirs) = (identity(1), identity(2));
        let (dialer, listener) = socket_pair().await;
        let (dialed, accepted) = tokio::join!(
            Tls::new(&ours).unwrap().upgrade_outbound(dialer, PROTOCOL),
            libp2p::tls::Config::new(&theirs)
                .unwrap()
                .upgrade_inbound(listener, PROTOCOL),
        );
        let (seen_by_us, stream) = dialed.unwrap();
        let (seen_by_them, _) = accepted.unwrap();
        assert_eq!(seen_by_us, theirs.public().to_peer_id());
        assert_eq!(seen_by_them, ours.public().to_peer_id());
        assert_eq!(suite(&stream), Some(preferred()));
    }

    #[tokio::test]
    async fn bytes_cross_a_connection_in_order_both_ways_whatever_the_write_sizes() {
        let (dialer, listener) = socket_pair().await;
        let (dialed, accepted) = tokio::join!(
            Tls::new(&identity(1))
                .unwrap()
                .upgrade_outbound(dialer, PROTOCOL),
            Tls::new(&identity(2))
                .unwrap()
                .upgrade_inbound(listener, PROTOCOL),
        );
        let (_, mut dialed) = dialed.unwrap();
        let (_, mut accepted) = accepted.unwrap();
        // Several frames' worth, in writes that straddle TLS records.
        let sent = pattern((3 << 20) + 1_001);
        let (received, echoed) = round_trip(&mut dialed, &mut accepted, &sent, 40_009).await;
        assert!(received == sent);
        assert!(echoed == sent);
    }

    #[tokio::test]
    async fn listening_to_libp2ps_own_tls_follows_the_dialers_cipher() {
        let (ours, theirs) = (identity(1), identity(2));
        let (dialer, listener) = socket_pair().await;
        let (dialed, accepted) = tokio::join!(
            libp2p::tls::Config::new(&theirs)
                .unwrap()
                .upgrade_outbound(dialer, PROTOCOL),
            Tls::new(&ours).unwrap().upgrade_inbound(listener, PROTOCOL),
        );
        let (seen_by_them, _) = dialed.unwrap();
        let (seen_by_us, stream) = accepted.unwrap();
        assert_eq!(seen_by_us, theirs.public().to_peer_id());
        assert_eq!(seen_by_them, ours.public().to_peer_id());
        // libp2p's own configuration offers ChaCha20-Poly1305 first.
        assert_eq!(
            suite(&stream),
            Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
        );
    }

    #[tokio::test]
    async fn a_dialer_without_a_certificate_is_refused() {
        let (dialer, listener) = socket_pair().await;
        let mut anonymous =
            rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PeerCertificate))
                .with_no_client_auth();
        anonymous.alpn_protocols = vec![ALPN.to_vec()];
        let (_, accepted) = tokio::join!(
            async {
                // The handshake completes on the dialer's side before the
                // listener refuses; the refusal ends the first read.
                let mut stream = TlsConnector::from(Arc::new(anonymous))
                    .connect(dial_name(), dialer)
                    .await?;
                let mut byte = [0u8; 1];
                let read = futures::AsyncReadExt::read(&mut stream, &mut byte);
                tokio::time::timeout(std::time::Duration::from_secs(10), read).await?
            },
            Tls::new(&identity(1))
                .unwrap()
                .upgrade_inbound(listener, PROTOCOL),
        );
        assert!(matches!(accepted, Err(HandshakeError::Tls(_))));
    }

    #[test]
    fn the_fast_suite_is_offered_first() {
        assert_eq!(
            cipher_suites(true)[0].suite(),
            CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(
            cipher_suites(false)[0].suite(),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
        assert_eq!(cipher_suites(true).len(), 3);
    }
}
