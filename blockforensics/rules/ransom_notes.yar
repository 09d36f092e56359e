/*
  Ransom notes and ransomware indicators shipped with blockforensics.
  Written for this project from the wording common to ransom notes (what happened,
  how to pay, how to get in touch); triage scans the first 64 KiB of every file a
  point creates, modifies or renames.  Add your own with `triage --rules DIR`.
*/

rule ransom_note_generic
{
    meta:
        description = "A note saying files were encrypted and asking for payment"
        severity = "high"
    strings:
        $enc1 = "files have been encrypted" nocase ascii wide
        $enc2 = "files are encrypted" nocase ascii wide
        $enc3 = "been locked" nocase ascii wide
        $enc4 = "your network has been" nocase ascii wide
        $pay1 = "bitcoin" nocase ascii wide
        $pay2 = "BTC" ascii wide
        $pay3 = "monero" nocase ascii wide
        $pay4 = "payment" nocase ascii wide
        $pay5 = "ransom" nocase ascii wide
        $key1 = "decrypt" nocase ascii wide
        $key2 = "private key" nocase ascii wide
        $key3 = "decryption tool" nocase ascii wide
        $contact1 = ".onion" nocase ascii wide
        $contact2 = "tor browser" nocase ascii wide
        $contact3 = "contact us" nocase ascii wide
    condition:
        filesize < 1MB and any of ($enc*) and any of ($pay*, $key*) and
        (any of ($contact*) or 2 of ($pay*, $key*))
}

rule ransom_note_any_language
{
    meta:
        description = "A note saying files or data were encrypted and naming a way to pay or to get them back, in English or another common language (UTF-8)"
        severity = "high"
    strings:
        // English wordings the generic rule misses
        $en1 = /(files|data|documents)( have| has| were| are)?( been)? (stolen and |all |currently )?(encrypted|crypted)/ nocase ascii wide
        $en2 = "are encrypted with" nocase ascii wide
        $es = "han sido cifrados" nocase
        $es2 = "han sido encriptados" nocase
        $pt = "foram criptografados" nocase
        $de = "verschlüsselt" nocase
        $fr1 = "ont été chiffrés" nocase
        $fr2 = "ont été cryptés" nocase
        $it = "sono stati crittografati" nocase
        $ru = "зашифрован"
        $zh = "已被加密"
        $pay1 = /\b(bitcoins?|BTC|monero|XMR|ransom)\b/ nocase ascii wide
        $pay2 = /decrypt(or|ion tool| tool|ion key|ion software)/ nocase ascii wide
        $pay3 = /(purchase|buy|pay for) (the |a )?(decrypt|key|tool)/ nocase ascii wide
        $pay4 = /\b(pagar|zahlen|payez|pagare|заплатит|оплатит)/ nocase
        $pay5 = /(descifr|entschlüssel|déchiffr|decifr|расшифр|解密)/ nocase
        $contact = /(\.onion\b|tor (browser|website|network)|protonmail|tutanota|onionmail|cock\.li|tox id|session id|@[a-z0-9-]+\.[a-z]{2,})/ nocase ascii wide
    condition:
        filesize < 1MB and any of ($en*, $es*, $pt, $de, $fr*, $it, $ru, $zh) and
        any of ($pay*) and ($contact or 2 of ($pay*))
}

rule ransom_note_filename_hint
{
    meta:
        description = "Text asking the reader not to rename or modify encrypted files"
        severity = "medium"
    strings:
        $a = "do not rename" nocase ascii wide
        $b = "do not modify" nocase ascii wide
        $c = "do not try to decrypt" nocase ascii wide
        $d = "permanent data loss" nocase ascii wide
    condition:
        filesize < 1MB and 2 of them
}

rule bitcoin_address_with_deadline
{
    meta:
        description = "A Bitcoin address next to a payment deadline"
        severity = "medium"
    strings:
        // an address standing alone: not a run inside base64 (an attachment, a key)
        $addr = /(^|[\s:>"'(])(bc1[02-9ac-hj-np-z]{25,59}|[13][a-km-zA-HJ-NP-Z1-9]{25,33})([\s<"',.)]|$)/ ascii
        $t1 = "hours" nocase ascii wide
        $t2 = "deadline" nocase ascii wide
        $t3 = "price will double" nocase ascii wide
    condition:
        filesize < 1MB and $addr and any of ($t*)
}
