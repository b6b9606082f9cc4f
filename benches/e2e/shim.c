/*
 * The library the benchmark's mover loads with coordinatool-lustre's dlopen loader. It is
 * linked with the preload (libcoordinatool_client.so) first and liblustreapi.so.1 second,
 * and defines nothing else: `dlsym` on a handle only searches that object's own dependency
 * tree, never the LD_PRELOAD list, so loading liblustreapi.so.1 directly would bypass the
 * preload. Through this shim the copytool functions resolve to the preload and every other
 * llapi function to liblustreapi, exactly as for a copytool linked with -llustreapi.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
int coordinatool_e2e_shim_version(void);

int coordinatool_e2e_shim_version(void)
{
	return 1;
}
