/**
 * TLS for the NBD client: what a caller gives (`NbdClientTls`), checked and read once, and the
 * upgrade of a handshake socket after NBD_OPT_STARTTLS is acknowledged.
 *
 * A client that asks for TLS never continues in plain text: a refused STARTTLS or a failed TLS
 * handshake fails the connect with MF_TLS (the spec's advice against downgrade attacks).
 *
 *   X.509:  { ca: pem }                      verify the server against this CA (host name checked)
 *           { certificates: dir }            libnbd/qemu layout: dir/ca-cert.pem, and
 *                                            dir/client-cert.pem + dir/client-key.pem if present
 *   PSK:    { psk: { identity, key } }       key: hex (as psktool writes) or bytes
 *           { psk: { identity, file } }      the key for `identity` from a psktool file
 */
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import type { ConnectionOptions, TLSSocket } from 'node:tls';
import { ErrorCodes, MemfabricError, invalidArgument } from '../../errors.js';
import { parsePskFile, PSK_CIPHERS_TLS12, PSK_KEY_BYTES_MAX, PSK_KEY_BYTES_MIN } from '../protocol/psk.js';

export interface NbdClientTls {
  /** PEM certificate(s) of the CA that signed the server's certificate. */
  ca?: string | Buffer;
  /** A certificates directory: ca-cert.pem, and client-cert.pem / client-key.pem when present. */
  certificates?: string;
  /** A client certificate and key (PEM), for servers that verify clients. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** TLS-PSK: the identity (on a memfabric appliance, the tenant) and its key or key file. */
  psk?: { identity: string; key?: string | Uint8Array; file?: string };
  /** The name the server certificate must carry; default: the host connected to. */
  servername?: string;
}

/** Checked options for node:tls, built once per client (files are read at resolve time). */
export interface ResolvedClientTls {
  readonly options: ConnectionOptions;
  /** 'PSK identity tenant-a' or 'X.509', for messages. */
  readonly label: string;
}

export function tlsError(message: string, cause?: unknown): MemfabricError {
  return new MemfabricError(ErrorCodes.TLS, message, cause === undefined ? {} : { cause });
}

function readPem(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw invalidArgument(`cannot read the ${what} ${path} (${code}); check tls.certificates`);
  }
}

function pskKey(psk: NonNullable<NbdClientTls['psk']>): Buffer {
  if (typeof psk.identity !== 'string' || psk.identity === '' || psk.identity.includes(':')) {
    throw invalidArgument('tls.psk.identity must be a non-empty string without ":"');
  }
  if (psk.file !== undefined) {
    let text: string;
    try {
      text = readFileSync(psk.file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      throw invalidArgument(`cannot read the PSK file ${psk.file} (${code})`);
    }
    const key = parsePskFile(text, psk.file).get(psk.identity);
    if (key === undefined) throw invalidArgument(`the PSK file ${psk.file} has no key for '${psk.identity}'`);
    return key;
  }
  const key =
    typeof psk.key === 'string'
      ? /^([0-9a-fA-F]{2})+$/.test(psk.key)
        ? Buffer.from(psk.key, 'hex')
        : undefined
      : psk.key instanceof Uint8Array
        ? Buffer.from(psk.key)
        : undefined;
  if (key === undefined || key.length < PSK_KEY_BYTES_MIN || key.length > PSK_KEY_BYTES_MAX) {
    throw invalidArgument(
      `tls.psk needs a key of ${PSK_KEY_BYTES_MIN}-${PSK_KEY_BYTES_MAX} bytes (hex string or bytes) or a file`,
    );
  }
  return key;
}

/** Validates `tls` and reads its files; throws MF_INVALID_ARGUMENT naming what is wrong. */
export function resolveClientTls(tls: NbdClientTls): ResolvedClientTls {
  if (typeof tls !== 'object' || tls === null) throw invalidArgument('tls must be an object');
  if (tls.psk !== undefined) {
    const key = pskKey(tls.psk);
    const identity = tls.psk.identity;
    return {
      label: `PSK identity '${identity}'`,
      options: {
        ciphers: PSK_CIPHERS_TLS12,
        minVersion: 'TLSv1.2',
        pskCallback: () => ({ identity, psk: key }),
        // The key authenticates the server: a certificate in a "PSK" session means the server
        // (or someone in between) ignored the key, and no CA trust makes that acceptable.
        checkServerIdentity: (_host: string, cert: { raw?: Buffer } | undefined) =>
          cert?.raw !== undefined
            ? new Error('the server answered with a certificate instead of the pre-shared key')
            : undefined,
      },
    };
  }
  let ca = tls.ca;
  let cert = tls.cert;
  let key = tls.key;
  if (tls.certificates !== undefined) {
    const dir = tls.certificates;
    ca ??= readPem(join(dir, 'ca-cert.pem'), 'CA certificate');
    if (cert === undefined && existsSync(join(dir, 'client-cert.pem'))) {
      cert = readPem(join(dir, 'client-cert.pem'), 'client certificate');
      key ??= readPem(join(dir, 'client-key.pem'), 'client key');
    }
  }
  if (ca === undefined) {
    throw invalidArgument('tls needs a CA to trust (tls.ca or tls.certificates) or a PSK (tls.psk)');
  }
  if ((cert === undefined) !== (key === undefined)) {
    throw invalidArgument('tls.cert and tls.key go together');
  }
  return {
    label: 'X.509',
    options: {
      ca,
      minVersion: 'TLSv1.2',
      ...(cert !== undefined ? { cert, key } : {}),
      ...(tls.servername !== undefined ? { servername: tls.servername } : {}),
    },
  };
}

/**
 * Runs the TLS handshake over `socket` (the server acknowledged STARTTLS). Resolves with the
 * TLSSocket once it is secure; rejects with MF_TLS if the handshake fails.
 */
export function upgradeClientSocket(
  socket: Socket,
  host: string,
  tls: ResolvedClientTls,
): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const options: ConnectionOptions = {
      ...tls.options,
      socket,
      host,
      // SNI takes names only; IP addresses are still checked against the certificate.
      ...(tls.options.servername === undefined && isIP(host) === 0 ? { servername: host } : {}),
    };
    const secure = tlsConnect(options);
    const onError = (err: Error): void => {
      secure.destroy();
      reject(
        tlsError(`TLS handshake with the nbd server ${host} failed (${tls.label}): ${err.message}`, err),
      );
    };
    secure.once('error', onError);
    secure.once('secureConnect', () => {
      secure.off('error', onError);
      resolve(secure);
    });
  });
}
