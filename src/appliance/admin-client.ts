/**
 * A small client for an appliance's admin API, shared by the CLI, the fabric and migration:
 * JSON in and out, a timeout on every call, the bearer token when one is given, HTTPS with an
 * optional CA (for appliances with a self-signed or private certificate), and the API's
 * `{ error: { code, message } }` turned back into a MemfabricError with the same code.
 *
 * It uses node:http and node:https rather than fetch because fetch cannot be told which CA to
 * trust for one request. Each call opens its own connection: admin calls are few, and no idle
 * connection is left to race the server's keep-alive timeout (HTTPS resumes TLS sessions).
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { ErrorCodes, MemfabricError, invalidArgument, type ErrorCode } from '../errors.js';

export const ADMIN_TIMEOUT_MS_DEFAULT = 30_000;

/**
 * HTTPS calls share one agent without keep-alive: no connection outlives its call, but the
 * agent caches TLS sessions (per CA), so later calls to an appliance resume instead of
 * running a full handshake.
 */
const httpsAgent = new HttpsAgent({ keepAlive: false, maxCachedSessions: 256 });
/** Answers larger than this are refused (a listing of 4096 regions is about 2 MiB). */
export const ADMIN_ANSWER_BYTES_MAX = 64 * 1024 * 1024;

/** An appliance's admin API and how to talk to it. */
export interface AdminTarget {
  /** The admin URL, e.g. http://127.0.0.1:10880 or https://10.0.0.2:10880. */
  url: string;
  /** Sent as `Authorization: Bearer <token>`. */
  token?: string;
  /** CA certificates (PEM) to trust for an https URL, instead of the system's. */
  ca?: string | Buffer;
}

/** A target as the callers give it: a bare URL (no token, system CAs) or an AdminTarget. */
export type AdminBase = string | AdminTarget;

export function adminTarget(base: AdminBase): AdminTarget {
  return typeof base === 'string' ? { url: base } : base;
}

export async function adminRequest<T>(
  base: AdminBase,
  method: string,
  path: string,
  body?: unknown,
  timeoutMs = ADMIN_TIMEOUT_MS_DEFAULT,
): Promise<T> {
  const target = adminTarget(base);
  let url: URL;
  try {
    url = new URL(path, target.url);
  } catch {
    throw invalidArgument(`"${target.url}" is not an appliance admin URL (like http://127.0.0.1:10880)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw invalidArgument(`"${target.url}" is not an appliance admin URL: use http:// or https://`);
  }
  const headers: Record<string, string> = {};
  const payload = body === undefined ? undefined : JSON.stringify(body);
  if (payload !== undefined) headers['content-type'] = 'application/json';
  if (target.token !== undefined) headers.authorization = `Bearer ${target.token}`;
  const timeout = AbortSignal.timeout(timeoutMs);
  let answer: { status: number; text: string };
  try {
    answer = await send(url, method, headers, payload, timeout, target.ca);
  } catch (error) {
    throw requestError(error, target.url, method, path, timeoutMs, timeout.aborted);
  }
  const { status, text } = answer;
  if (status === 204) return undefined as T;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new MemfabricError(
      ErrorCodes.INTERNAL,
      `${method} ${path}: the appliance at ${target.url} answered ${status} with non-JSON`,
    );
  }
  if (status < 200 || status >= 300) {
    const error = (parsed as { error?: { code?: string; message?: string } } | null)?.error;
    throw new MemfabricError(
      (error?.code as ErrorCode | undefined) ?? ErrorCodes.INTERNAL,
      error?.message ?? `${method} ${path} failed with HTTP ${status}`,
    );
  }
  return parsed as T;
}

function send(
  url: URL,
  method: string,
  headers: Record<string, string>,
  payload: string | undefined,
  signal: AbortSignal,
  ca: string | Buffer | undefined,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const secure = url.protocol === 'https:';
    const onAnswer = (response: IncomingMessage): void => {
      const chunks: Buffer[] = [];
      let bytes = 0;
      response.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > ADMIN_ANSWER_BYTES_MAX) {
          request.destroy(new Error(`the answer is larger than ${ADMIN_ANSWER_BYTES_MAX} bytes`));
          return;
        }
        chunks.push(chunk);
      });
      response.on('end', () =>
        resolve({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }),
      );
      response.on('error', reject);
      response.on('close', () => {
        if (!response.complete) reject(new Error('the answer was cut short'));
      });
    };
    const options = { method, headers, signal };
    const request = secure
      ? httpsRequest(url, { ...options, agent: httpsAgent, ...(ca !== undefined ? { ca } : {}) }, onAnswer)
      : httpRequest(url, { ...options, agent: false }, onAnswer);
    request.on('error', reject);
    request.end(payload);
  });
}

const UNTRUSTED_CERTIFICATE = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

function requestError(
  error: unknown,
  base: string,
  method: string,
  path: string,
  timeoutMs: number,
  timedOut: boolean,
): MemfabricError {
  if (timedOut) {
    return new MemfabricError(
      ErrorCodes.TIMEOUT,
      `the appliance at ${base} did not answer ${method} ${path} within ${timeoutMs} ms`,
      { cause: error },
    );
  }
  const code = (error as NodeJS.ErrnoException).code ?? '';
  if (UNTRUSTED_CERTIFICATE.has(code)) {
    return new MemfabricError(
      ErrorCodes.CONNECTION_CLOSED,
      `the certificate of the appliance at ${base} is not trusted (${code}); give its CA ` +
        '(memfabric CLI: --ca FILE; code: the ca option) or use the name the certificate was made for',
      { cause: error },
    );
  }
  if (code === 'EPROTO' || code === 'ERR_SSL_WRONG_VERSION_NUMBER') {
    return new MemfabricError(
      ErrorCodes.CONNECTION_CLOSED,
      `the appliance at ${base} does not speak the protocol of its URL (${code}); use https:// for an appliance started with --http-tls-cert, http:// otherwise`,
      { cause: error },
    );
  }
  return new MemfabricError(
    ErrorCodes.CONNECTION_CLOSED,
    `cannot reach the appliance at ${base}${code ? ` (${code})` : ''}; is it running? (start one with: memfabric appliance)`,
    { cause: error },
  );
}
