/**
 * TLS for NBD (NBD_OPT_STARTTLS), server side: the policy (`off`, `on`, `require`), the
 * credentials (an X.509 certificates directory, a TLS-PSK key file, or both) and the upgrade of
 * an accepted socket.
 *
 * Files use the layout qemu-nbd and nbdkit use, so one set of credentials serves all three:
 *   --tls-certificates DIR   DIR/ca-cert.pem, DIR/server-cert.pem, DIR/server-key.pem
 *   --tls-psk FILE           one `identity:hexkey` per line (what `psktool` writes)
 *
 * Identity: a TLS-PSK connection is authenticated as its PSK identity, a connection with a
 * verified client certificate as the certificate's common name. The identity names the tenant
 * whose regions the connection may see (handshake.ts passes it to the export directory); the
 * `adminIdentities` see everything. A connection without an identity (plain, or X.509 without
 * a client certificate) is not restricted: TLS-PSK (or client certificates) is the isolation
 * boundary, plain NBD is for loopback and trusted networks.
 *
 * PSK works with TLS 1.2 PSK cipher suites and with TLS 1.3 (OpenSSL runs the same callback for
 * a TLS 1.3 external PSK with a SHA-256 suite), which is what GnuTLS clients (libnbd, qemu)
 * offer; see PSK_CIPHERS_TLS12. The key file's format and the PSK suites are shared with the
 * client: ../protocol/psk.ts.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { constants as cryptoConstants } from 'node:crypto';
import { createSecureContext, TLSSocket } from 'node:tls';
import type { SecureContext, SecureContextOptions } from 'node:tls';
import type { Socket } from 'node:net';
import { ErrorCodes, MemfabricError, invalidArgument } from '../../errors.js';
import { parsePskFile, PSK_CIPHERS_TLS12 } from '../protocol/psk.js';

export type NbdTlsMode = 'off' | 'on' | 'require';
export const NBD_TLS_MODES: readonly NbdTlsMode[] = ['off', 'on', 'require'];

export interface NbdServerTlsOptions {
  /** `off`: STARTTLS is refused; `on`: TLS at the client's choice; `require`: nothing but STARTTLS before TLS. */
  mode: NbdTlsMode;
  /** qemu/nbdkit certificates directory: ca-cert.pem (to verify clients), server-cert.pem, server-key.pem. */
  certificates?: string;
  /** psktool key file: `identity:hexkey` lines. */
  psk?: string;
  /** Ask every X.509 client for a certificate signed by ca-cert.pem and refuse those without. Default false. */
  verifyClientCertificates?: boolean;
  /** Identities that see every region (an operator's key), not only their tenant's. */
  adminIdentities?: readonly string[];
}

/** Loaded credentials, ready for upgrades. */
export interface ServerTls {
  readonly mode: NbdTlsMode;
  readonly secureContext: SecureContext | undefined;
  readonly pskKeys: ReadonlyMap<string, Buffer>;
  readonly requestCert: boolean;
  /** Trust anchors for client certificates (ca-cert.pem), when they are verified. */
  readonly clientCas: readonly X509Certificate[];
  readonly adminIdentities: ReadonlySet<string>;
}

/**
 * TLS 1.3 suites in our order of preference. SHA-256 suites lead because OpenSSL serves a TLS
 * 1.3 external PSK from the PSK callback only with them.
 */
export const TLS13_SUITES = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384';
/** The TLS 1.3 suites offered when PSK keys are loaded (see loadServerTls). */
export const TLS13_SUITES_SHA256 = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';
/** TLS 1.2 suites for certificates: forward secret AEAD only. */
const CERT_CIPHERS_TLS12 = 'ECDHE+AESGCM:ECDHE+CHACHA20';

function tlsConfigError(message: string, cause?: unknown): MemfabricError {
  return new MemfabricError(ErrorCodes.INVALID_ARGUMENT, message, cause === undefined ? {} : { cause });
}

function readConfigFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw tlsConfigError(
      `cannot read the ${what} ${path} (${code}); check the path and its permissions`,
      err,
    );
  }
}

/** Validates options and reads every file now, so a bad path fails at start, not at the first client. */
export function loadServerTls(options: NbdServerTlsOptions): ServerTls {
  const mode = options.mode;
  if (!NBD_TLS_MODES.includes(mode)) {
    throw invalidArgument(`tls mode must be off, on or require (got ${JSON.stringify(mode)})`);
  }
  const adminIdentities = new Set(options.adminIdentities ?? []);
  if (mode === 'off') {
    return {
      mode,
      secureContext: undefined,
      pskKeys: new Map(),
      requestCert: false,
      clientCas: [],
      adminIdentities,
    };
  }
  if (options.certificates === undefined && options.psk === undefined) {
    throw invalidArgument(
      `tls mode '${mode}' needs credentials: a certificates directory (--tls-certificates) or a PSK file (--tls-psk)`,
    );
  }
  const contextOptions: SecureContextOptions = {
    minVersion: 'TLSv1.2',
    honorCipherOrder: true,
    // OpenSSL refuses session lookups (a TLS 1.3 PSK is one) on a server that verifies peers
    // without a session id context; tls.Server sets one, a bare TLSSocket must be given it.
    sessionIdContext: 'memfabric-nbd',
  };
  let requestCert = false;
  let clientCas: X509Certificate[] = [];
  if (options.certificates !== undefined) {
    const dir = options.certificates;
    contextOptions.cert = readConfigFile(join(dir, 'server-cert.pem'), 'server certificate');
    contextOptions.key = readConfigFile(join(dir, 'server-key.pem'), 'server key');
    if (options.verifyClientCertificates) {
      const caPath = join(dir, 'ca-cert.pem');
      const ca = readConfigFile(caPath, 'CA certificate');
      contextOptions.ca = ca;
      clientCas = parseCertificates(ca, caPath);
      requestCert = true;
    }
  } else if (options.verifyClientCertificates) {
    throw invalidArgument('verifying client certificates needs a certificates directory (ca-cert.pem)');
  }
  let pskKeys = new Map<string, Buffer>();
  if (options.psk !== undefined) {
    pskKeys = parsePskFile(readConfigFile(options.psk, 'PSK file').toString('utf8'), options.psk);
  }
  // Our order, not the client's (honorCipherOrder): AES-GCM is about twice as fast as ChaCha20
  // where the CPU has AES instructions, and GnuTLS clients often list ChaCha20 first. TLS 1.3
  // suites go in the same string (node splits them off by their TLS_ prefix). With a PSK file,
  // the TLS 1.2 PSK suites are added: a client may use either kind of credential.
  const tls12 = [
    ...(options.certificates !== undefined ? [CERT_CIPHERS_TLS12] : []),
    ...(options.psk !== undefined ? [PSK_CIPHERS_TLS12] : []),
  ];
  // With PSK keys, TLS 1.3 suites are limited to SHA-256 ones (the hash of a PSK from the
  // callback): OpenSSL skips a PSK whose hash does not match the suite before it checks the
  // binder, so a SHA-384 suite would let a client name an identity it holds no key for.
  contextOptions.ciphers = [options.psk !== undefined ? TLS13_SUITES_SHA256 : TLS13_SUITES, ...tls12].join(
    ':',
  );
  // No session tickets: a resumed TLS 1.3 session looks like an external PSK (isSessionReused),
  // and identities are only ever proven by a key from the PSK file or a verified certificate.
  contextOptions.secureOptions = cryptoConstants.SSL_OP_NO_TICKET;
  let secureContext: SecureContext;
  try {
    secureContext = createSecureContext(contextOptions);
  } catch (err) {
    throw tlsConfigError(
      `the TLS credentials in ${options.certificates ?? options.psk} are unusable: ${(err as Error).message}`,
      err,
    );
  }
  return { mode, secureContext, pskKeys, requestCert, clientCas, adminIdentities };
}

function parseCertificates(pem: Buffer, path: string): X509Certificate[] {
  const blocks = pem
    .toString('latin1')
    .match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  if (blocks === null) throw tlsConfigError(`${path} holds no PEM certificate`);
  try {
    return blocks.map((block) => new X509Certificate(block));
  } catch (err) {
    throw tlsConfigError(`${path} holds a certificate that cannot be parsed: ${(err as Error).message}`, err);
  }
}

/** Longest client certificate chain we follow to a trust anchor. */
const CHAIN_LENGTH_MAX = 8;

/**
 * Checks the client's certificate chain against `cas`: each certificate within its validity
 * period and signed by the next, the last link signed by a trust anchor. OpenSSL already checked
 * that the client holds the leaf's key; node leaves the chain verdict to the TLS server object,
 * which a socket upgraded in the middle of a protocol does not have. Returns the reason a chain
 * is refused, or undefined when it is trusted.
 */
export function clientChainProblem(socket: TLSSocket, cas: readonly X509Certificate[]): string | undefined {
  const chain: X509Certificate[] = [];
  let link = socket.getPeerCertificate(true);
  while (link !== undefined && link !== null && link.raw !== undefined && chain.length < CHAIN_LENGTH_MAX) {
    chain.push(new X509Certificate(link.raw));
    const issuer = link.issuerCertificate;
    if (issuer === undefined || issuer === link) break;
    link = issuer;
  }
  if (chain.length === 0) return 'the client sent no certificate';
  const now = Date.now();
  for (let i = 0; i < chain.length; i++) {
    const cert = chain[i];
    if (now < Date.parse(cert.validFrom) || now > Date.parse(cert.validTo)) {
      return `certificate '${cert.subject.replace(/\n/g, ', ')}' is not valid now`;
    }
    if (cas.some((ca) => cert.checkIssued(ca) && cert.verify(ca.publicKey))) return undefined;
    const next = chain[i + 1];
    if (next === undefined || !next.ca || !cert.checkIssued(next) || !cert.verify(next.publicKey)) break;
  }
  return 'the client certificate is not signed by ca-cert.pem';
}

/** The outcome of a server-side upgrade, once the TLS handshake has finished. */
export interface TlsPeer {
  /** The PSK identity or the verified client certificate's CN; undefined: anonymous. */
  readonly identity: string | undefined;
}

/**
 * Wraps an accepted socket (right after NBD_REP_ACK to STARTTLS was written) in a server-side
 * TLSSocket. `onSecure` runs once the TLS handshake succeeds and a client certificate (when
 * asked for) is trusted; failures surface as 'error' on the returned socket. Bytes the peer already sent are handed to TLS by node (TLSSocket reads what
 * the wrapped socket buffered).
 */
export function upgradeServerSocket(
  socket: Socket,
  tls: ServerTls,
  onSecure: (tlsSocket: TLSSocket, peer: TlsPeer) => void,
): TLSSocket {
  let pskIdentity: string | undefined;
  const pskKeys = tls.pskKeys;
  const tlsSocket = new TLSSocket(socket, {
    isServer: true,
    ...(tls.secureContext ? { secureContext: tls.secureContext } : {}),
    requestCert: tls.requestCert,
    rejectUnauthorized: tls.requestCert,
    ...(pskKeys.size > 0
      ? {
          pskCallback: (_socket: TLSSocket, identity: string): Buffer | null => {
            const key = pskKeys.get(identity);
            if (key === undefined) return null; // unknown identity: the handshake fails
            pskIdentity = identity;
            return key;
          },
        }
      : {}),
  });
  tlsSocket.once('secure', () => {
    // The callback having been asked for a key does not mean the PSK was used: OpenSSL may drop
    // it and go on with a certificate handshake. Only a session that really ran on the PSK
    // (TLS 1.3: an accepted external PSK shows as a reused session, and there are no tickets;
    // TLS 1.2: a PSK suite) proves the identity.
    const viaPsk =
      pskIdentity !== undefined &&
      (tlsSocket.getProtocol() === 'TLSv1.3'
        ? tlsSocket.isSessionReused()
        : tlsSocket.getCipher().name.includes('PSK'));
    let identity = viaPsk ? pskIdentity : undefined;
    if (identity === undefined && tls.requestCert) {
      const problem = clientChainProblem(tlsSocket, tls.clientCas);
      if (problem !== undefined) {
        tlsSocket.destroy(new Error(`client certificate refused: ${problem}`));
        return;
      }
      // A verified certificate names its tenant; one without a single usable CN is refused
      // rather than left unrestricted.
      const cn = tlsSocket.getPeerCertificate().subject?.CN;
      if (typeof cn !== 'string' || cn === '') {
        tlsSocket.destroy(new Error('client certificate refused: it has no single CN to name its tenant'));
        return;
      }
      identity = cn;
    }
    onSecure(tlsSocket, { identity });
  });
  return tlsSocket;
}
