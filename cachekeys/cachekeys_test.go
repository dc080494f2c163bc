package cachekeys

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// refEscape is a straightforward reference implementation of part escaping.
func refEscape(p string) string {
	if p == "" {
		return "%"
	}
	var sb strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-' {
			sb.WriteByte(c)
		} else {
			fmt.Fprintf(&sb, "%%%02X", c)
		}
	}
	return sb.String()
}

// refFull is the reference unhashed key.
func refFull(ns, table, version string, gen uint64, parts []string) string {
	esc := make([]string, len(parts))
	for i, p := range parts {
		esc[i] = refEscape(p)
	}
	return fmt.Sprintf("%s:%s:%s:%d:", ns, table, version, gen) + strings.Join(esc, ":")
}

// refHashed is the reference hashed key for a full key with the given prefix.
func refHashed(prefix, full string) string {
	sum := sha256.Sum256([]byte(full))
	if len(prefix) > MaxKeyLen-44 {
		prefix = prefix[:MaxKeyLen-44]
	}
	return prefix + "#" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// decodeKey inverts the unhashed key format for a builder prefix. It is the
// left inverse that proves the encoding injective.
func decodeKey(prefix, key string) ([]string, error) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return nil, fmt.Errorf("key %q lacks prefix %q", key, prefix)
	}
	if rest == "" {
		return []string{}, nil
	}
	var parts []string
	for _, enc := range strings.Split(rest, ":") {
		if enc == "%" {
			parts = append(parts, "")
			continue
		}
		if enc == "" {
			return nil, fmt.Errorf("key %q has an empty encoded part", key)
		}
		var sb strings.Builder
		for i := 0; i < len(enc); i++ {
			c := enc[i]
			if c != '%' {
				if !safe(c) {
					return nil, fmt.Errorf("key %q has unescaped byte %q", key, c)
				}
				sb.WriteByte(c)
				continue
			}
			if i+3 > len(enc) {
				return nil, fmt.Errorf("key %q has truncated escape", key)
			}
			h := enc[i+1 : i+3]
			if strings.ToUpper(h) != h {
				return nil, fmt.Errorf("key %q has lowercase escape", key)
			}
			v, err := strconv.ParseUint(h, 16, 8)
			if err != nil {
				return nil, fmt.Errorf("key %q: %v", key, err)
			}
			if safe(byte(v)) {
				return nil, fmt.Errorf("key %q escapes safe byte %q", key, byte(v))
			}
			sb.WriteByte(byte(v))
			i += 2
		}
		parts = append(parts, sb.String())
	}
	return parts, nil
}

// gomemcacheLegal mirrors gomemcache's legalKey check.
func gomemcacheLegal(key string) bool {
	if len(key) > 250 {
		return false
	}
	for i := 0; i < len(key); i++ {
		if key[i] <= ' ' || key[i] == 0x7f {
			return false
		}
	}
	return true
}

func checkLegal(t testing.TB, key string) {
	t.Helper()
	if err := Valid(key); err != nil {
		t.Fatalf("Valid(%q) = %v, want nil", key, err)
	}
	if !gomemcacheLegal(key) {
		t.Fatalf("key %q is illegal for gomemcache", key)
	}
}

func mustNew(t testing.TB, ns, table, version string) Builder {
	t.Helper()
	b, err := New(ns, table, version)
	if err != nil {
		t.Fatalf("New(%q, %q, %q) = %v", ns, table, version, err)
	}
	return b
}

func TestNew(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name                  string
		ns, table, version    string
		wantErr               bool
		wantField, wantPrefix string
	}{
		{name: "plain", ns: "shop", table: "products", version: "v1", wantPrefix: "shop:products:v1:0:"},
		{name: "all safe bytes", ns: "A-z_0.9", table: "t", version: "deadBEEF", wantPrefix: "A-z_0.9:t:deadBEEF:0:"},
		{name: "64 bytes", ns: long, table: long, version: long, wantPrefix: long + ":" + long + ":" + long + ":0:"},
		{name: "empty namespace", ns: "", table: "t", version: "v1", wantErr: true, wantField: "namespace"},
		{name: "empty table", ns: "s", table: "", version: "v1", wantErr: true, wantField: "table"},
		{name: "empty version", ns: "s", table: "t", version: "", wantErr: true, wantField: "version"},
		{name: "long namespace", ns: long + "a", table: "t", version: "v1", wantErr: true, wantField: "namespace"},
		{name: "long table", ns: "s", table: long + "a", version: "v1", wantErr: true, wantField: "table"},
		{name: "long version", ns: "s", table: "t", version: long + "a", wantErr: true, wantField: "version"},
		{name: "colon in namespace", ns: "a:b", table: "t", version: "v1", wantErr: true, wantField: "namespace"},
		{name: "space in table", ns: "s", table: "my table", version: "v1", wantErr: true, wantField: "table"},
		{name: "hash in version", ns: "s", table: "t", version: "v#1", wantErr: true, wantField: "version"},
		{name: "percent in table", ns: "s", table: "t%", version: "v1", wantErr: true, wantField: "table"},
		{name: "newline in namespace", ns: "s\n", table: "t", version: "v1", wantErr: true, wantField: "namespace"},
		{name: "unicode in table", ns: "s", table: "tä", version: "v1", wantErr: true, wantField: "table"},
		{name: "del in version", ns: "s", table: "t", version: "v\x7f", wantErr: true, wantField: "version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := New(tt.ns, tt.table, tt.version)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("New err = %v, want wrapping ErrInvalid", err)
				}
				if msg := err.Error(); !strings.HasPrefix(msg, "cachekeys: ") || !strings.Contains(msg, tt.wantField) {
					t.Fatalf("New err = %q, want prefix %q naming %q", msg, "cachekeys: ", tt.wantField)
				}
				if got := b.Key("1"); got != "" {
					t.Fatalf("failed New returned usable builder: Key = %q", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("New err = %v, want nil", err)
			}
			if got := b.Key(); got != tt.wantPrefix {
				t.Fatalf("Key() = %q, want %q", got, tt.wantPrefix)
			}
			if got := b.Generation(); got != 0 {
				t.Fatalf("Generation() = %d, want 0", got)
			}
		})
	}
}

func TestKeyFormat(t *testing.T) {
	b := mustNew(t, "shop", "products", "v1")
	tests := []struct {
		name  string
		parts []string
		want  string
	}{
		{"no parts", nil, "shop:products:v1:0:"},
		{"int", []string{"42"}, "shop:products:v1:0:42"},
		{"negative int", []string{"-7"}, "shop:products:v1:0:-7"},
		{"safe string", []string{"Ab-9_x.y"}, "shop:products:v1:0:Ab-9_x.y"},
		{"colon", []string{"a:b"}, "shop:products:v1:0:a%3Ab"},
		{"percent", []string{"100%"}, "shop:products:v1:0:100%25"},
		{"hash", []string{"#x"}, "shop:products:v1:0:%23x"},
		{"space", []string{"a b"}, "shop:products:v1:0:a%20b"},
		{"newline", []string{"a\nb"}, "shop:products:v1:0:a%0Ab"},
		{"tab cr nul del", []string{"\t\r\x00\x7f"}, "shop:products:v1:0:%09%0D%00%7F"},
		{"unicode", []string{"Käse"}, "shop:products:v1:0:K%C3%A4se"},
		{"emoji", []string{"🙂"}, "shop:products:v1:0:%F0%9F%99%82"},
		{"high byte", []string{"\xff"}, "shop:products:v1:0:%FF"},
		{"slash plus", []string{"a/b+c"}, "shop:products:v1:0:a%2Fb%2Bc"},
		{"empty part", []string{""}, "shop:products:v1:0:%"},
		{"lone percent part", []string{"%"}, "shop:products:v1:0:%25"},
		{"composite", []string{"7", "en"}, "shop:products:v1:0:7:en"},
		{"composite three", []string{"tenant-1", "42", "2024"}, "shop:products:v1:0:tenant-1:42:2024"},
		{"composite empty first", []string{"", "a"}, "shop:products:v1:0:%:a"},
		{"composite empty last", []string{"a", ""}, "shop:products:v1:0:a:%"},
		{"composite empty both", []string{"", ""}, "shop:products:v1:0:%:%"},
		{"composite with colon", []string{"a:b", "c"}, "shop:products:v1:0:a%3Ab:c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := b.Key(tt.parts...)
			if got != tt.want {
				t.Fatalf("Key(%q) = %q, want %q", tt.parts, got, tt.want)
			}
			checkLegal(t, got)
			if ref := refFull("shop", "products", "v1", 0, tt.parts); got != ref {
				t.Fatalf("Key(%q) = %q, reference %q", tt.parts, got, ref)
			}
			if app := string(b.AppendKey([]byte("x"), tt.parts...)); app != "x"+tt.want {
				t.Fatalf("AppendKey = %q, want %q", app, "x"+tt.want)
			}
			back, err := decodeKey("shop:products:v1:0:", got)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(back, tt.parts) {
				t.Fatalf("decode(%q) = %q, want %q", got, back, tt.parts)
			}
		})
	}
}

func TestGeneration(t *testing.T) {
	b := mustNew(t, "shop", "products", "v1")
	tests := []struct {
		gen  uint64
		want string
	}{
		{0, "shop:products:v1:0:42"},
		{1, "shop:products:v1:1:42"},
		{1234567, "shop:products:v1:1234567:42"},
		{^uint64(0), "shop:products:v1:18446744073709551615:42"},
	}
	for _, tt := range tests {
		g := b.WithGeneration(tt.gen)
		if got := g.Generation(); got != tt.gen {
			t.Errorf("Generation() = %d, want %d", got, tt.gen)
		}
		if got := g.Key("42"); got != tt.want {
			t.Errorf("gen %d: Key = %q, want %q", tt.gen, got, tt.want)
		}
	}
	if got, want := b.Key("42"), "shop:products:v1:0:42"; got != want {
		t.Errorf("WithGeneration modified the original: Key = %q, want %q", got, want)
	}
	if got, want := b.WithGeneration(5).WithGeneration(0).Key("42"), b.Key("42"); got != want {
		t.Errorf("generation round trip: %q, want %q", got, want)
	}
}

func TestZeroBuilder(t *testing.T) {
	var b Builder
	if got := b.Key("1"); got != "" {
		t.Errorf("zero Key = %q, want empty", got)
	}
	if got := b.IntKey(1); got != "" {
		t.Errorf("zero IntKey = %q, want empty", got)
	}
	if got := b.WithGeneration(3).Key("1"); got != "" {
		t.Errorf("zero WithGeneration Key = %q, want empty", got)
	}
	if got := string(b.AppendKey([]byte("x"), "1")); got != "x" {
		t.Errorf("zero AppendKey = %q, want %q", got, "x")
	}
	if err := Valid(b.Key()); !errors.Is(err, ErrInvalid) {
		t.Errorf("Valid(zero key) = %v, want ErrInvalid", err)
	}
}

func TestHashBoundary(t *testing.T) {
	b := mustNew(t, "ns", "t", "v") // prefix "ns:t:v:0:" is 9 bytes
	const prefix = "ns:t:v:0:"
	tests := []struct {
		name       string
		parts      []string
		fullLen    int
		wantHashed bool
	}{
		{"249 safe", []string{strings.Repeat("a", 240)}, 249, false},
		{"250 safe", []string{strings.Repeat("a", 241)}, 250, false},
		{"251 safe", []string{strings.Repeat("a", 242)}, 251, true},
		{"250 escaped", []string{strings.Repeat("a", 238) + ":"}, 250, false},
		{"251 escaped", []string{strings.Repeat("a", 239) + ":"}, 251, true},
		{"250 composite", []string{strings.Repeat("a", 120), strings.Repeat("b", 120)}, 250, false},
		{"251 composite", []string{strings.Repeat("a", 120), strings.Repeat("b", 121)}, 251, true},
		{"250 empty parts", append(slices.Repeat([]string{""}, 120), "a"), 9 + 120*2 + 1, false},
		{"250 only empty parts", slices.Repeat([]string{""}, 121), 9 + 121*2 - 1, false},
		{"251 empty parts", append(slices.Repeat([]string{""}, 120), "ab"), 9 + 120*2 + 2, true},
		{"huge", []string{strings.Repeat("\x00", 1<<16)}, 9 + 3<<16, true},
		{"many parts", slices.Repeat([]string{"x:y"}, 1000), 9 + 1000*5 + 999, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			full := refFull("ns", "t", "v", 0, tt.parts)
			if len(full) != tt.fullLen {
				t.Fatalf("test setup: full key is %d bytes, want %d", len(full), tt.fullLen)
			}
			want := full
			if tt.wantHashed {
				want = refHashed(prefix, full)
			}
			got := b.Key(tt.parts...)
			if got != want {
				t.Fatalf("Key = %q, want %q", got, want)
			}
			checkLegal(t, got)
			if hashed := strings.Contains(got, "#"); hashed != tt.wantHashed {
				t.Fatalf("hashed = %v, want %v", hashed, tt.wantHashed)
			}
			if tt.wantHashed && len(got) != len(prefix)+44 {
				t.Fatalf("hashed key length = %d, want %d", len(got), len(prefix)+44)
			}
			if again := b.Key(tt.parts...); again != got {
				t.Fatalf("not deterministic: %q then %q", got, again)
			}
			if app := string(b.AppendKey(make([]byte, 0, 8), tt.parts...)); app != got {
				t.Fatalf("AppendKey = %q, want %q", app, got)
			}
		})
	}
}

func TestHashLongPrefix(t *testing.T) {
	long := strings.Repeat("n", 64)
	b := mustNew(t, long, long, long).WithGeneration(^uint64(0))
	prefix := long + ":" + long + ":" + long + ":18446744073709551615:"
	if got := b.Key(); got != prefix {
		t.Fatalf("Key() = %q, want %q", got, prefix)
	}
	parts := []string{strings.Repeat("p", 40)}
	full := prefix + parts[0]
	got := b.Key(parts...)
	if want := refHashed(prefix, full); got != want {
		t.Fatalf("Key = %q, want %q", got, want)
	}
	if len(got) != MaxKeyLen {
		t.Fatalf("len = %d, want %d", len(got), MaxKeyLen)
	}
	checkLegal(t, got)
	// A different generation must change the hashed key even though the
	// readable prefix is cut before the generation's last digits.
	if other := b.WithGeneration(^uint64(0) - 1).Key(parts...); other == got {
		t.Fatalf("generations collide on %q", got)
	}
	// Largest unhashed key for this prefix.
	fit := []string{strings.Repeat("p", MaxKeyLen-len(prefix))}
	if got := b.Key(fit...); got != prefix+fit[0] {
		t.Fatalf("Key = %q, want unhashed %q", got, prefix+fit[0])
	}
}

// TestHashChunking checks the streamed hash across chunk boundaries.
func TestHashChunking(t *testing.T) {
	b := mustNew(t, "ns", "t", "v")
	for n := 490; n < 530; n++ {
		for _, fill := range []string{"a", ":", "ab:"} {
			parts := []string{strings.Repeat(fill, n)[:n], "", "x"}
			want := refHashed("ns:t:v:0:", refFull("ns", "t", "v", 0, parts))
			if got := b.Key(parts...); got != want {
				t.Fatalf("n=%d fill=%q: Key = %q, want %q", n, fill, got, want)
			}
		}
	}
}

func TestKnownCollisionsDistinct(t *testing.T) {
	b := mustNew(t, "shop", "products", "v1")
	tests := []struct{ a, b []string }{
		{[]string{"a:b"}, []string{"a", "b"}},
		{[]string{"a", ""}, []string{"a"}},
		{[]string{""}, nil},
		{[]string{"", ""}, []string{""}},
		{[]string{"%"}, []string{""}},
		{[]string{"%3A"}, []string{":"}},
		{[]string{"%25"}, []string{"%"}},
		{[]string{"a%3Ab"}, []string{"a:b"}},
		{[]string{"a", "b:c"}, []string{"a:b", "c"}},
		{[]string{"#"}, []string{"%23"}},
		{[]string{"A"}, []string{"a"}},
		{[]string{"1"}, []string{"01"}},
	}
	for _, tt := range tests {
		ka, kb := b.Key(tt.a...), b.Key(tt.b...)
		if ka == kb {
			t.Errorf("Key(%q) == Key(%q) == %q", tt.a, tt.b, ka)
		}
	}
	// Distinct tables, namespaces, versions and generations never collide.
	keys := map[string]string{}
	for _, c := range []struct {
		b    Builder
		name string
	}{
		{mustNew(t, "a", "b", "c"), "a/b/c"},
		{mustNew(t, "a", "b", "c").WithGeneration(1), "a/b/c/1"},
		{mustNew(t, "a", "b", "c").WithGeneration(10), "a/b/c/10"},
		{mustNew(t, "a", "b", "d"), "a/b/d"},
		{mustNew(t, "a", "bc", "d"), "a/bc/d"},
		{mustNew(t, "ab", "c", "d"), "ab/c/d"},
	} {
		for _, parts := range [][]string{nil, {""}, {"1"}, {"0", "1"}} {
			k := c.b.Key(parts...)
			id := fmt.Sprintf("%s%q", c.name, parts)
			if prev, ok := keys[k]; ok {
				t.Errorf("%s and %s both give %q", prev, id, k)
			}
			keys[k] = id
		}
	}
}

// randomParts draws part lists from a small alphabet rich in separators and
// escape characters so that near-collisions are frequent.
func randomParts(r *rand.Rand) []string {
	alphabet := []string{"", "a", "b", ":", "%", "#", "3A", "%3A", "25", " ", "\n", "ä", "\x00", "\xff", "A", "-"}
	n := r.IntN(5)
	parts := make([]string, n)
	for i := range parts {
		var sb strings.Builder
		for range r.IntN(4) {
			sb.WriteString(alphabet[r.IntN(len(alphabet))])
		}
		if r.IntN(50) == 0 {
			sb.WriteString(strings.Repeat("z", 200+r.IntN(100))) // force hashing sometimes
		}
		parts[i] = sb.String()
	}
	return parts
}

func TestDistinctProperty(t *testing.T) {
	b := mustNew(t, "shop", "products", "v1")
	r := rand.New(rand.NewPCG(1, 2))
	seen := map[string][]string{}
	hashed := 0
	for range 50000 {
		parts := randomParts(r)
		k := b.Key(parts...)
		checkLegal(t, k)
		if prev, ok := seen[k]; ok && !slices.Equal(prev, parts) {
			t.Fatalf("Key(%q) == Key(%q) == %q", prev, parts, k)
		}
		seen[k] = parts
		if strings.Contains(k, "#") {
			hashed++
			continue
		}
		back, err := decodeKey("shop:products:v1:0:", k)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(back, parts) {
			t.Fatalf("decode(Key(%q)) = %q", parts, back)
		}
	}
	if hashed == 0 || len(seen) < 1000 {
		t.Fatalf("weak test: %d distinct keys, %d hashed", len(seen), hashed)
	}
}

func TestValid(t *testing.T) {
	tests := []struct {
		name, key string
		ok        bool
	}{
		{"simple", "a", true},
		{"typical", "shop:products:v1:0:42", true},
		{"250 bytes", strings.Repeat("k", 250), true},
		{"high bytes", "k\xc3\xa4", true},
		{"tilde", "~!#$%", true},
		{"empty", "", false},
		{"251 bytes", strings.Repeat("k", 251), false},
		{"space", "a b", false},
		{"newline", "a\n", false},
		{"nul", "\x00", false},
		{"tab", "a\tb", false},
		{"del", "a\x7f", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Valid(tt.key)
			if got := err == nil; got != tt.ok {
				t.Fatalf("Valid(%q) = %v, want ok=%v", tt.key, err, tt.ok)
			}
			if got := gomemcacheLegal(tt.key) && tt.key != ""; got != tt.ok {
				t.Fatalf("gomemcache legality of %q = %v, test wants %v", tt.key, got, tt.ok)
			}
			if err != nil && (!errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), "cachekeys: ")) {
				t.Fatalf("Valid(%q) = %v, want wrapping ErrInvalid", tt.key, err)
			}
		})
	}
}

type (
	myInt     int64
	myUint8   uint8
	myString  string
	myBool    bool
	myBytes   []byte
	myUUID    [16]byte
	stringer  struct{ s string }
	enum      int
	ptrString struct{ s string }
)

func (s stringer) String() string   { return "S(" + s.s + ")" }
func (e enum) String() string       { return "enum" }
func (p *ptrString) String() string { return p.s }

func TestPart(t *testing.T) {
	uuid := [16]byte{0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17, 0x40, 0x00}
	ts := time.Date(2024, 3, 1, 12, 30, 45, 123456789, time.FixedZone("X", 2*3600))
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"string", "héllo:x", "héllo:x"},
		{"empty string", "", ""},
		{"int", 42, "42"},
		{"int negative", -42, "-42"},
		{"int8", int8(-128), "-128"},
		{"int16", int16(32767), "32767"},
		{"int32", int32(-5), "-5"},
		{"int64 min", int64(-9223372036854775808), "-9223372036854775808"},
		{"uint", uint(7), "7"},
		{"uint8", uint8(255), "255"},
		{"uint16", uint16(65535), "65535"},
		{"uint32", uint32(4294967295), "4294967295"},
		{"uint64 max", ^uint64(0), "18446744073709551615"},
		{"uintptr", uintptr(9), "9"},
		{"true", true, "t"},
		{"false", false, "f"},
		{"bytes", []byte{0x00, 0xAB, 0xff}, "00abff"},
		{"nil bytes", []byte(nil), ""},
		{"uuid", uuid, "123e4567e89b12d3a456426614174000"},
		{"time", ts, "2024-03-01T10:30:45.123456789Z"},
		{"time whole second", time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), "2024-01-02T03:04:05Z"},
		{"named int", myInt(-3), "-3"},
		{"named uint8", myUint8(200), "200"},
		{"named int with String", enum(2), "2"},
		{"named string", myString("x y"), "x y"},
		{"named bool", myBool(true), "t"},
		{"named bytes", myBytes{1, 2}, "0102"},
		{"named uuid", myUUID(uuid), "123e4567e89b12d3a456426614174000"},
		{"stringer", stringer{"a"}, "S(a)"},
		{"pointer stringer", &ptrString{"p"}, "p"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Part(tt.in)
			if err != nil {
				t.Fatalf("Part(%#v) error %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("Part(%#v) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}

	bad := []struct {
		name string
		in   any
	}{
		{"nil", nil},
		{"float64", 1.5},
		{"float32", float32(1)},
		{"complex", 1i},
		{"struct", struct{ A int }{1}},
		{"pointer to int", new(int)},
		{"nil stringer pointer", (*ptrString)(nil)},
		{"int slice", []int{1}},
		{"short byte array", [4]byte{}},
		{"map", map[string]int{}},
		{"func", func() {}},
		{"chan", make(chan int)},
	}
	for _, tt := range bad {
		t.Run("bad "+tt.name, func(t *testing.T) {
			got, err := Part(tt.in)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Part(%T) = %q, %v; want ErrInvalid", tt.in, got, err)
			}
			if !strings.HasPrefix(err.Error(), "cachekeys: ") {
				t.Fatalf("error %q lacks package prefix", err)
			}
		})
	}
}

func TestIntKeyAndAppendInt(t *testing.T) {
	b := mustNew(t, "shop", "products", "v1").WithGeneration(3)
	for _, id := range []int64{0, 1, -1, 42, 1 << 40, -9223372036854775808, 9223372036854775807} {
		want := b.Key(strconv.FormatInt(id, 10))
		if got := b.IntKey(id); got != want {
			t.Errorf("IntKey(%d) = %q, want %q", id, got, want)
		}
		if got := string(AppendInt(b.AppendKey(nil), id)); got != want {
			t.Errorf("AppendInt(AppendKey(nil), %d) = %q, want %q", id, got, want)
		}
		p, err := Part(id)
		if err != nil || string(AppendInt(nil, id)) != p {
			t.Errorf("AppendInt(%d) = %q, Part = %q, %v", id, AppendInt(nil, id), p, err)
		}
	}
}

func TestAllocs(t *testing.T) {
	b := mustNew(t, "shop", "products", "v1").WithGeneration(7)
	buf := make([]byte, 0, MaxKeyLen)
	var sink string
	tests := []struct {
		name string
		fn   func()
		want float64
	}{
		{"Key int", func() { sink = b.Key("12345") }, 1},
		{"Key string", func() { sink = b.Key("sku-ABC.9") }, 1},
		{"Key escaped", func() { sink = b.Key("a:b c") }, 1},
		{"Key composite", func() { sink = b.Key("tenant-1", "12345") }, 1},
		{"IntKey", func() { sink = b.IntKey(1234567) }, 1},
		{"AppendKey int", func() { buf = b.AppendKey(buf[:0], "12345") }, 0},
		{"AppendKey composite", func() { buf = b.AppendKey(buf[:0], "tenant-1", "a:b") }, 0},
		{"AppendInt", func() { buf = AppendInt(b.AppendKey(buf[:0]), 1234567) }, 0},
		{"Valid", func() { _ = Valid("shop:products:v1:7:12345") }, 0},
	}
	for _, tt := range tests {
		if got := testing.AllocsPerRun(100, tt.fn); got != tt.want {
			t.Errorf("%s: %v allocs/op, want %v", tt.name, got, tt.want)
		}
	}
	_ = sink
}

func TestConcurrentUse(t *testing.T) {
	b := mustNew(t, "shop", "products", "v1")
	want := b.Key("x", "1")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				if got := b.Key("x", "1"); got != want {
					t.Errorf("Key = %q, want %q", got, want)
					return
				}
				_ = b.WithGeneration(uint64(g*1000 + i)).Key(strings.Repeat("y", 300))
			}
		})
	}
	wg.Wait()
}

// decodeFuzzParts turns fuzz bytes into a part list: each part is a length
// byte followed by up to that many bytes; a length byte of 0xff adds 200
// bytes of padding so that hashing is exercised.
func decodeFuzzParts(data []byte) []string {
	parts := []string{}
	for len(data) > 0 && len(parts) < 64 {
		n := int(data[0])
		data = data[1:]
		pad := ""
		if n == 0xff {
			n, pad = 8, strings.Repeat("~", 200)
		}
		n = min(n, len(data))
		parts = append(parts, string(data[:n])+pad)
		data = data[n:]
	}
	return parts
}

func FuzzKey(f *testing.F) {
	f.Add([]byte{3, 'a', ':', 'b'}, []byte{1, 'a', 1, 'b'}, uint64(0))
	f.Add([]byte{1, 'a', 0}, []byte{1, 'a'}, uint64(1))
	f.Add([]byte{0}, []byte{}, uint64(2))
	f.Add([]byte{1, '%'}, []byte{0}, uint64(0))
	f.Add([]byte{3, '%', '3', 'A'}, []byte{1, ':'}, uint64(42))
	f.Add([]byte{0xff, 1, 2, 3, 4, 5, 6, 7, 8}, []byte{0xff, 1, 2, 3, 4, 5, 6, 7, 9}, ^uint64(0))
	f.Add([]byte("\x05h\xc3\xa4\n#\x02 \x7f"), []byte("\x05h\xc3\xa4\n#"), uint64(7))
	b0, err := New("shop", "products", "v1")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, a, c []byte, gen uint64) {
		b := b0.WithGeneration(gen)
		prefix := "shop:products:v1:" + strconv.FormatUint(gen, 10) + ":"
		pa, pc := decodeFuzzParts(a), decodeFuzzParts(c)
		ka, kc := b.Key(pa...), b.Key(pc...)
		for _, k := range []string{ka, kc} {
			if err := Valid(k); err != nil || !gomemcacheLegal(k) {
				t.Fatalf("illegal key %q: %v", k, err)
			}
		}
		if again := b.Key(pa...); again != ka {
			t.Fatalf("not deterministic: %q then %q", ka, again)
		}
		if app := string(b.AppendKey(nil, pa...)); app != ka {
			t.Fatalf("AppendKey = %q, Key = %q", app, ka)
		}
		full := refFull("shop", "products", "v1", gen, pa)
		if len(full) <= MaxKeyLen {
			if ka != full {
				t.Fatalf("Key(%q) = %q, reference %q", pa, ka, full)
			}
			back, err := decodeKey(prefix, ka)
			if err != nil || !slices.Equal(back, pa) {
				t.Fatalf("decode(Key(%q)) = %q, %v", pa, back, err)
			}
		} else if want := refHashed(prefix, full); ka != want {
			t.Fatalf("Key(%q) = %q, reference %q", pa, ka, want)
		}
		hashed := strings.Contains(ka, "#")
		if hashed != (len(full) > MaxKeyLen) {
			t.Fatalf("Key(%q) = %q: hashed = %v for %d-byte full key", pa, ka, hashed, len(full))
		}
		if ka == kc && !hashed && !slices.Equal(pa, pc) {
			t.Fatalf("Key(%q) == Key(%q) == %q", pa, pc, ka)
		}
		if ka != kc && slices.Equal(pa, pc) {
			t.Fatalf("equal parts %q give %q and %q", pa, ka, kc)
		}
	})
}

func BenchmarkKey(b *testing.B) {
	kb, err := New("shop", "products", "v1")
	if err != nil {
		b.Fatal(err)
	}
	kb = kb.WithGeneration(7)
	long := strings.Repeat("x", 300)
	buf := make([]byte, 0, MaxKeyLen)
	var sink string
	b.Run("int", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sink = kb.Key("1234567")
		}
	})
	b.Run("IntKey", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sink = kb.IntKey(1234567)
		}
	})
	b.Run("string", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sink = kb.Key("sku-ABC.9")
		}
	})
	b.Run("escaped", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sink = kb.Key("Käse: 100%")
		}
	})
	b.Run("composite", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sink = kb.Key("tenant-1", "1234567")
		}
	})
	b.Run("hashed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sink = kb.Key(long)
		}
	})
	b.Run("AppendKey", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			buf = kb.AppendKey(buf[:0], "1234567")
		}
	})
	b.Run("AppendInt", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			buf = AppendInt(kb.AppendKey(buf[:0]), 1234567)
		}
	})
	_ = sink
}
