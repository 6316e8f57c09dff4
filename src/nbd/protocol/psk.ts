/**
 * The TLS-PSK side of NBD's TLS that the server and the client share: the psktool key file
 * (`identity:hexkey` per line, the file qemu-nbd, nbdkit and libnbd read), the bounds on
 * identities and keys, and the TLS 1.2 PSK cipher suites both sides offer.
 */
import { ErrorCodes, MemfabricError } from '../../errors.js';

/** TLS 1.2 PSK suites (AEAD first); TLS 1.3 suites are OpenSSL's defaults and all usable with PSK. */
export const PSK_CIPHERS_TLS12 = [
  'ECDHE-PSK-CHACHA20-POLY1305',
  'DHE-PSK-AES256-GCM-SHA384',
  'DHE-PSK-AES128-GCM-SHA256',
  'PSK-AES256-GCM-SHA384',
  'PSK-AES128-GCM-SHA256',
  'ECDHE-PSK-AES128-CBC-SHA256',
  'PSK-AES128-CBC-SHA256',
].join(':');

/** Longest PSK identity (RFC 4279 allows 2^16 - 1 bytes; tenant names are at most 64). */
export const PSK_IDENTITY_BYTES_MAX = 128;
/** Key lengths we accept: at least 128 bits, at most what OpenSSL's callback takes (PSK_MAX_PSK_LEN). */
export const PSK_KEY_BYTES_MIN = 16;
export const PSK_KEY_BYTES_MAX = 256;
/** Lines in a PSK file. */
export const PSK_ENTRIES_MAX = 65_536;

const IDENTITY_PATTERN = /^[\x21-\x39\x3b-\x7e]+$/; // printable ASCII without ':' and space

function pskFileError(message: string): MemfabricError {
  return new MemfabricError(ErrorCodes.INVALID_ARGUMENT, message);
}

/**
 * Parses a psktool file: `identity:hexkey` per line; blank lines and `#` comments are skipped.
 * Throws MF_INVALID_ARGUMENT naming the file and line for anything else.
 */
export function parsePskFile(text: string, path = 'PSK file'): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '' || line.startsWith('#')) continue;
    const where = `${path} line ${i + 1}`;
    const colon = line.lastIndexOf(':');
    if (colon <= 0) throw pskFileError(`${where}: expected identity:hexkey (as psktool writes)`);
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (!IDENTITY_PATTERN.test(identity) || identity.length > PSK_IDENTITY_BYTES_MAX) {
      throw pskFileError(
        `${where}: identity must be 1-${PSK_IDENTITY_BYTES_MAX} printable characters without ':' or spaces`,
      );
    }
    if (!/^[0-9a-fA-F]+$/.test(hex) || hex.length % 2 !== 0) {
      throw pskFileError(`${where}: the key must be an even number of hex digits`);
    }
    const key = Buffer.from(hex, 'hex');
    if (key.length < PSK_KEY_BYTES_MIN || key.length > PSK_KEY_BYTES_MAX) {
      throw pskFileError(
        `${where}: the key has ${key.length} bytes; use ${PSK_KEY_BYTES_MIN}-${PSK_KEY_BYTES_MAX} (psktool -s 32)`,
      );
    }
    if (keys.has(identity)) throw pskFileError(`${where}: identity '${identity}' appears twice`);
    if (keys.size >= PSK_ENTRIES_MAX) throw pskFileError(`${path}: more than ${PSK_ENTRIES_MAX} keys`);
    keys.set(identity, key);
  }
  if (keys.size === 0) throw pskFileError(`${path} holds no key; write one with psktool -u NAME -p ${path}`);
  return keys;
}

/** Formats one psktool line (`identity:hexkey`). */
export function formatPskLine(identity: string, key: Uint8Array): string {
  return `${identity}:${Buffer.from(key).toString('hex')}`;
}
