/* Test setup only, never shipped: Wine 8's bcryptprimitives.dll lacks
 * ProcessPrng, which the Rust standard library imports on Windows. This
 * stand-in fills the buffer from RtlGenRandom (advapi32's
 * SystemFunction036), as Windows' own implementation does from its
 * kernel generator. tests/tests/windows_minion.rs builds it with mingw
 * and loads it with WINEDLLOVERRIDES="bcryptprimitives=n,b". */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
