/**
 * Paths a user passes in (a swap file, a directory for swap or for file regions) fail in a few
 * ways the user can fix: a directory that does not exist, a file where a directory is needed or
 * the reverse, no permission. Those become MF_BAD_PATH naming the path and saying what to do,
 * with the system error as `cause`; anything else (EIO, EMFILE) is not the path's fault and is
 * left to the caller.
 */
import { mkdir, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ErrorCodes, MemfabricError } from './errors.js';

const NOT_WRITABLE = new Set(['EACCES', 'EPERM', 'EROFS']);

function errnoOf(error: unknown): string | undefined {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * MF_BAD_PATH for a failure to open or create the FILE `path` (`what` names it: "swap file"),
 * or undefined when the failure is not the path's fault.
 */
export function filePathError(error: unknown, what: string, path: string): MemfabricError | undefined {
  const errno = errnoOf(error);
  let message: string;
  if (errno === 'ENOENT') {
    message = `${what} ${path}: its directory ${dirname(path)} does not exist; create it, or give a path in an existing directory`;
  } else if (errno === 'ENOTDIR') {
    message = `${what} ${path}: part of the path is a file, not a directory; give a path whose directories exist`;
  } else if (errno === 'EISDIR') {
    message = `${what} ${path} is a directory; give the path of a file`;
  } else if (errno !== undefined && NOT_WRITABLE.has(errno)) {
    message = `${what} ${path} cannot be opened for writing (${errno}); fix the permissions, or give a path this process may write`;
  } else if (errno === 'ELOOP' || errno === 'ENAMETOOLONG') {
    message = `${what} ${path} cannot be used (${errno}); give another path`;
  } else {
    return undefined;
  }
  return new MemfabricError(ErrorCodes.BAD_PATH, message, { cause: error });
}

/**
 * Checks that the DIRECTORY `path` exists (creating it and its parents when `create`) and is a
 * directory. Throws MF_BAD_PATH naming it otherwise. Writability shows when a file is created
 * in it (filePathError).
 */
export async function checkDirectory(path: string, what: string, create: boolean): Promise<void> {
  if (create) {
    try {
      await mkdir(path, { recursive: true });
    } catch (error) {
      const errno = errnoOf(error);
      if (errno === 'EEXIST' || errno === 'ENOTDIR') {
        throw new MemfabricError(
          ErrorCodes.BAD_PATH,
          `${what} ${path} is not a directory (a file is in the way); remove that file or give another directory`,
          { cause: error },
        );
      }
      if (errno !== undefined && NOT_WRITABLE.has(errno)) {
        throw new MemfabricError(
          ErrorCodes.BAD_PATH,
          `${what} ${path} does not exist and cannot be created (${errno}); create it yourself, or give a directory this process may write`,
          { cause: error },
        );
      }
      throw error;
    }
  }
  let isDirectory: boolean;
  try {
    isDirectory = (await stat(path)).isDirectory();
  } catch (error) {
    const errno = errnoOf(error);
    if (errno === 'ENOENT' || errno === 'ENOTDIR') {
      throw new MemfabricError(
        ErrorCodes.BAD_PATH,
        `${what} ${path} does not exist; create it, or give an existing directory`,
        { cause: error },
      );
    }
    throw filePathError(error, what, path) ?? error;
  }
  if (!isDirectory) {
    throw new MemfabricError(
      ErrorCodes.BAD_PATH,
      `${what} ${path} is a file, not a directory; give a directory`,
    );
  }
}
