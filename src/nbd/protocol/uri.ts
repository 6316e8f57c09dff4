/**
 * NBD URIs (the NBD project's doc/uri.md), the TCP forms memfabric's client speaks:
 *
 *   nbd://HOST[:PORT][/EXPORT][?QUERY]     plain TCP
 *   nbds://HOST[:PORT][/EXPORT][?QUERY]    TLS required (never a fallback to plain text)
 *
 * PORT defaults to 10809 (IANA); the export name is the path without its first '/',
 * percent-decoded, so `nbd://h` and `nbd://h/` name the default export '' and `nbd://h//disk`
 * names '/disk'. An IPv6 host goes in brackets (`nbd://[::1]:10809/x`). Query parameters:
 * `tls-hostname` (the name the server certificate must carry) and `tls-type` (`x509` or `psk`,
 * checked against the credentials given). The spec says parameters a client does not understand
 * should be diagnosed, so any other one is refused, as are Unix-socket and vsock schemes
 * (the client connects over TCP only), a userinfo part and a fragment.
 *
 * Every refusal is MF_INVALID_ARGUMENT naming the URI and showing a valid one.
 */
import { invalidArgument } from '../../errors.js';
import { NBD_PORT } from './constants.js';

export interface NbdUri {
  /** nbds: the connection must use TLS. */
  readonly tls: boolean;
  readonly host: string;
  readonly port: number;
  readonly exportName: string;
  /** The `tls-hostname` parameter, when given. */
  readonly tlsHostname?: string;
  /** The `tls-type` parameter, when given. */
  readonly tlsType?: 'x509' | 'psk';
  /** The URI without query: `nbd://host:port/export`, for messages and names. */
  readonly display: string;
}

export const NBD_URI_EXAMPLE = 'nbd://127.0.0.1:10809/heap (or nbds://… for TLS)';

/**
 * The path of `uri` after its first '/', as written. Not `URL.pathname`: WHATWG URLs resolve
 * dot segments, so an export named "." or ".." (legal NBD names) would come out empty.
 */
function rawPath(uri: string): string {
  const authority = uri.indexOf('://') + 3;
  const slash = uri.indexOf('/', authority);
  if (slash < 0) return '';
  const end = uri.slice(slash + 1).search(/[?#]/);
  return end < 0 ? uri.slice(slash + 1) : uri.slice(slash + 1, slash + 1 + end);
}

function bad(uri: string, why: string): Error {
  return invalidArgument(
    `${JSON.stringify(uri)} is not an NBD URI memfabric can use: ${why}; for example ${NBD_URI_EXAMPLE}`,
  );
}

/** Parses an NBD URI; throws MF_INVALID_ARGUMENT (see the overview) for anything else. */
export function parseNbdUri(uri: unknown): NbdUri {
  if (typeof uri !== 'string' || uri === '') {
    throw invalidArgument(
      `an NBD URI must be a non-empty string, not ${String(uri)}; for example ${NBD_URI_EXAMPLE}`,
    );
  }
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(uri) && !/^nbd/i.test(uri)) {
    throw bad(uri, 'it has no scheme: start it with nbd:// (or nbds:// for TLS)');
  }
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw bad(uri, 'it does not parse as a URI (is the port a number from 1 to 65535?)');
  }
  const scheme = url.protocol.slice(0, -1).toLowerCase();
  if (scheme !== 'nbd' && scheme !== 'nbds') {
    throw bad(
      uri,
      /^nbds?\+(unix|vsock)$/.test(scheme)
        ? `the ${scheme}:// scheme is not supported (memfabric connects over TCP only)`
        : `the scheme is ${scheme}://, not nbd:// or nbds://`,
    );
  }
  if (!uri.slice(url.protocol.length).startsWith('//') || url.hostname === '') {
    throw bad(uri, 'it names no host');
  }
  if (url.username !== '' || url.password !== '') {
    throw bad(uri, 'a user name in the URI is not supported (give a PSK identity in tls.psk.identity)');
  }
  if (url.hash !== '') throw bad(uri, 'an NBD URI has no #fragment');
  const port = url.port === '' ? NBD_PORT : Number(url.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw bad(uri, `port ${url.port} is not from 1 to 65535`);
  }
  let exportName: string;
  try {
    exportName = decodeURIComponent(rawPath(uri));
  } catch {
    throw bad(uri, 'the export name has a malformed %-escape');
  }
  if (exportName.includes('\0')) throw bad(uri, 'the export name contains NUL');
  let tlsHostname: string | undefined;
  let tlsType: 'x509' | 'psk' | undefined;
  for (const [key, value] of url.searchParams) {
    if (key === 'tls-hostname' && value !== '') tlsHostname = value;
    else if (key === 'tls-type' && (value === 'x509' || value === 'psk')) tlsType = value;
    else if (key === 'tls-type') {
      throw bad(uri, `tls-type=${value} is not supported (x509 or psk)`);
    } else {
      throw bad(
        uri,
        `the query parameter ${JSON.stringify(key)} is not understood (tls-hostname and tls-type are)`,
      );
    }
  }
  if (scheme === 'nbd' && (tlsHostname !== undefined || tlsType !== undefined)) {
    throw bad(uri, 'TLS parameters need the nbds:// scheme');
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const hostPart = host.includes(':') ? `[${host}]` : host;
  return {
    tls: scheme === 'nbds',
    host,
    port,
    exportName,
    ...(tlsHostname === undefined ? {} : { tlsHostname }),
    ...(tlsType === undefined ? {} : { tlsType }),
    display: `${scheme}://${hostPart}:${port}/${encodeURIComponent(exportName).replace(/%2F/g, '/')}`,
  };
}
