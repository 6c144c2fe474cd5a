// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @notice The subset of ERC-20 the settlement contract calls.
interface IERC20 {
    function balanceOf(address account) external view returns (uint256);
    function transfer(address to, uint256 value) external returns (bool);
    function transferFrom(address from, address to, uint256 value) external returns (bool);
}

/// @title AgoraSettlement
/// @notice The embedded ledger's settlement rules (crates/ledger) on an EVM chain, phase 1:
/// stake with unbonding, verifier registration, payment channels in one ERC-20 with cumulative
/// EIP-712 vouchers, and receipt roots per epoch. Audits (selection, commit, reveal, verdict,
/// slash) are not on chain yet; see docs/settlement.md.
/// @dev Every amount is an integer in the token's base units. Epochs are derived from block
/// numbers: epoch = (block.number - startBlock) / epochBlocks. Every function that moves
/// tokens holds a reentrancy lock and changes state before it calls the token.
contract AgoraSettlement {
    /// @notice Rule parameters fixed at deployment (the ledger's genesis `Params`).
    struct Params {
        /// Blocks per epoch.
        uint64 epochBlocks;
        /// Epochs between unstaking and the stake becoming withdrawable.
        uint64 unbondingEpochs;
        /// Epochs a selected leaf stays open for its commitment, and then for its reveal.
        uint64 auditWindowEpochs;
        /// Epochs in which a verdict on a revealed failure may land (at least 1).
        uint64 escalationEpochs;
        /// Epochs a provider has to answer a material demand (1 ..= escalationEpochs + 1).
        uint64 answerEpochs;
        /// Epochs a provider keeps to claim after the payer asks to close a channel.
        uint64 claimWindowEpochs;
        /// Bonded stake a provider must hold to post receipt roots.
        uint128 minProviderStake;
        /// Bonded stake a verifier must hold.
        uint128 minVerifierStake;
        /// Share of every claim that goes to the audit pool, in basis points.
        uint16 auditFeeBps;
    }

    struct Account {
        uint128 stake;
        uint128 unbonding;
        uint64 releaseEpoch;
        bool verifier;
    }

    struct Channel {
        address payer;
        uint64 expiresEpoch;
        address provider;
        /// 0 while open; the epoch from which the channel may be finalized once the payer asked.
        uint64 closesEpoch;
        bool closed;
        uint128 deposit;
        uint128 claimed;
    }

    struct Root {
        bytes32 root;
        uint64 receipts;
        bool full;
    }

    /// The most leaves a root may claim (the ledger's MAX_PLANNED_LEAVES).
    uint64 public constant MAX_RECEIPTS = 1 << 20;
    uint256 private constant SECP256K1_HALF_N =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    /// @notice The payer signs `Voucher(channel, cumulative)`: the provider may have claimed
    /// `cumulative` in total from `channel` after it.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channel,uint256 cumulative)");
    bytes32 private constant NAME_HASH = keccak256("Agora");
    bytes32 private constant VERSION_HASH = keccak256("1");

    IERC20 public immutable token;
    uint256 public immutable startBlock;
    uint64 public immutable epochBlocks;
    uint64 public immutable unbondingEpochs;
    uint64 public immutable auditWindowEpochs;
    uint64 public immutable escalationEpochs;
    uint64 public immutable answerEpochs;
    uint64 public immutable claimWindowEpochs;
    uint128 public immutable minProviderStake;
    uint128 public immutable minVerifierStake;
    uint16 public immutable auditFeeBps;
    uint256 private immutable cachedChainId;
    bytes32 private immutable cachedDomainSeparator;

    mapping(address => Account) public accounts;
    mapping(bytes32 => Channel) public channels;
    /// Channels opened by each payer so far; the next channel's id derives from it.
    mapping(address => uint64) public channelNonce;
    mapping(address => mapping(uint64 => Root)) public roots;
    /// The ed25519 network key each account declared (see bindNetworkKey).
    mapping(address => bytes32) public networkKey;
    /// That key's ed25519 signature over the binding (64 bytes), for peers to check.
    mapping(address => bytes) public networkKeySig;
    /// Audit fees taken from claims, held for the audits of phase 2.
    uint256 public auditPool;
    uint256 private locked = 1;

    event Staked(address indexed account, uint256 amount, uint256 stake);
    event Unstaked(address indexed account, uint256 amount, uint64 releaseEpoch);
    event Withdrawn(address indexed account, uint256 amount);
    event VerifierRegistered(address indexed account, uint256 stake);
    event VerifierDeregistered(address indexed account);
    event NetworkKeyBound(address indexed account, bytes32 indexed networkKey, bytes bindingSig);
    event ChannelOpened(
        bytes32 indexed channel, address indexed payer, address indexed provider, uint256 amount, uint64 expiresEpoch
    );
    event ChannelToppedUp(bytes32 indexed channel, uint256 amount, uint256 deposit);
    event VoucherClaimed(
        bytes32 indexed channel, address indexed provider, uint256 amount, uint256 cumulative, uint256 auditFee
    );
    event ChannelClosing(bytes32 indexed channel, uint64 closesEpoch);
    event ChannelClosed(bytes32 indexed channel, uint256 refund);
    event ReceiptRootPosted(address indexed provider, uint64 indexed epoch, bytes32 root, uint64 receipts, bool full);
    event UnbondingHeld(address indexed account, uint64 releaseEpoch);

    error BadParams(string reason);
    error UnbondingTooShort(uint64 unbonding, uint256 need);
    error Reentered();
    error ZeroAmount();
    error AmountTooLarge(uint256 amount);
    error TokenCallFailed();
    error TokenBalanceMismatch(uint256 expected, uint256 received);
    error InsufficientStake(address account, uint256 have, uint256 need);
    error NothingToWithdraw(address account);
    error StillUnbonding(address account, uint64 releaseEpoch, uint64 epoch);
    error BadNetworkKeyBinding();
    error BadChannelParty(address provider);
    error ChannelTimeoutTooShort(uint64 timeout, uint64 claimWindow);
    error UnknownChannel(bytes32 channel);
    error NotChannelPayer(bytes32 channel, address account);
    error NotChannelProvider(bytes32 channel, address account);
    error ChannelIsClosed(bytes32 channel);
    error ChannelNotExpired(bytes32 channel, uint64 expiresEpoch, uint64 epoch);
    error ChannelNotDue(bytes32 channel, uint64 closesEpoch, uint64 epoch);
    error ForgedVoucher(bytes32 channel, address signer);
    error DoubleClaim(uint256 cumulative, uint256 claimed);
    error OverClaim(uint256 cumulative, uint256 deposit);
    error WrongEpoch(uint64 expected, uint64 got);
    error BadReceiptCount(uint64 receipts);
    error RootAlreadyPosted(address provider, uint64 epoch);

    modifier nonReentrant() {
        if (locked != 1) revert Reentered();
        locked = 2;
        _;
        locked = 1;
    }

    /// @param token_ The ERC-20 everything is paid and staked in.
    /// @param p The rules, validated as the ledger validates its genesis.
    constructor(IERC20 token_, Params memory p) {
        if (address(token_).code.length == 0) revert BadParams("token is not a contract");
        if (p.epochBlocks == 0) revert BadParams("epochBlocks must be positive");
        if (p.auditFeeBps > 10_000) revert BadParams("auditFeeBps above 10000");
        if (p.escalationEpochs == 0) revert BadParams("escalationEpochs must be positive");
        if (p.claimWindowEpochs == 0) revert BadParams("claimWindowEpochs must be positive");
        if (p.answerEpochs == 0 || uint256(p.answerEpochs) > uint256(p.escalationEpochs) + 1) {
            revert BadParams("answerEpochs outside 1..=escalationEpochs+1");
        }
        // Stake outlives every verdict that could take it (the ledger's min_unbonding_epochs):
        // selection 1, commitments w, reveal 1, plant opening 1, escalation x; and an
        // inclusion challenge filed by r + 1 + x, answered by + a, slashed one epoch later.
        uint256 verdicts = 4 + uint256(p.auditWindowEpochs) + uint256(p.escalationEpochs);
        uint256 challenges = 2 + uint256(p.escalationEpochs) + uint256(p.answerEpochs);
        uint256 need = verdicts > challenges ? verdicts : challenges;
        if (p.unbondingEpochs < need) revert UnbondingTooShort(p.unbondingEpochs, need);

        token = token_;
        startBlock = block.number;
        epochBlocks = p.epochBlocks;
        unbondingEpochs = p.unbondingEpochs;
        auditWindowEpochs = p.auditWindowEpochs;
        escalationEpochs = p.escalationEpochs;
        answerEpochs = p.answerEpochs;
        claimWindowEpochs = p.claimWindowEpochs;
        minProviderStake = p.minProviderStake;
        minVerifierStake = p.minVerifierStake;
        auditFeeBps = p.auditFeeBps;
        cachedChainId = block.chainid;
        cachedDomainSeparator = _buildDomainSeparator();
    }

    // ----- views -----

    /// @notice The current epoch, derived from the block number.
    function currentEpoch() public view returns (uint64) {
        return uint64((block.number - startBlock) / epochBlocks);
    }

    /// @notice The EIP-712 domain separator (name "Agora", version "1", this chain, this contract).
    function domainSeparator() public view returns (bytes32) {
        return block.chainid == cachedChainId ? cachedDomainSeparator : _buildDomainSeparator();
    }

    /// @notice The EIP-712 digest a payer signs for a voucher.
    function voucherDigest(bytes32 channel, uint256 cumulative) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(VOUCHER_TYPEHASH, channel, cumulative));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// @notice The id of the channel `payer` opens with its `nonce`-th openChannel.
    function channelId(address payer, uint64 nonce) public view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), payer, nonce));
    }

    /// @notice The parameters fixed at deployment.
    function params() external view returns (Params memory) {
        return Params({
            epochBlocks: epochBlocks,
            unbondingEpochs: unbondingEpochs,
            auditWindowEpochs: auditWindowEpochs,
            escalationEpochs: escalationEpochs,
            answerEpochs: answerEpochs,
            claimWindowEpochs: claimWindowEpochs,
            minProviderStake: minProviderStake,
            minVerifierStake: minVerifierStake,
            auditFeeBps: auditFeeBps
        });
    }

    // ----- stake -----

    /// @notice Bonds `amount` of the sender's tokens (approved to this contract) as stake.
    function stake(uint256 amount) external nonReentrant {
        uint128 a = _amount(amount);
        Account storage acct = accounts[msg.sender];
        acct.stake += a;
        emit Staked(msg.sender, a, acct.stake);
        _pull(msg.sender, a);
    }

    /// @notice Starts unbonding `amount` of stake; it is withdrawable `unbondingEpochs` from now.
    /// @dev One unbonding bucket per account: a later unstake delays the whole bucket, so stake
    /// never leaves earlier than the ledger would release it.
    function unstake(uint256 amount) external nonReentrant {
        uint128 a = _amount(amount);
        Account storage acct = accounts[msg.sender];
        if (acct.stake < a) revert InsufficientStake(msg.sender, acct.stake, a);
        acct.stake -= a;
        acct.unbonding += a;
        uint64 release = currentEpoch() + unbondingEpochs;
        if (release > acct.releaseEpoch) acct.releaseEpoch = release;
        emit Unstaked(msg.sender, a, acct.releaseEpoch);
        if (acct.verifier && acct.stake < minVerifierStake) {
            acct.verifier = false;
            emit VerifierDeregistered(msg.sender);
        }
    }

    /// @notice Withdraws the whole unbonded bucket once its release epoch is reached.
    function withdraw() external nonReentrant {
        Account storage acct = accounts[msg.sender];
        uint128 amount = acct.unbonding;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        uint64 epoch = currentEpoch();
        if (epoch < acct.releaseEpoch) revert StillUnbonding(msg.sender, acct.releaseEpoch, epoch);
        acct.unbonding = 0;
        acct.releaseEpoch = 0;
        emit Withdrawn(msg.sender, amount);
        _push(msg.sender, amount);
    }

    /// @notice Bonds `extraStake` more (may be zero) and becomes a verifier; the bonded stake
    /// must reach `minVerifierStake`.
    function registerVerifier(uint256 extraStake) external nonReentrant {
        if (extraStake > type(uint128).max) revert AmountTooLarge(extraStake);
        uint128 a = uint128(extraStake);
        Account storage acct = accounts[msg.sender];
        acct.stake += a;
        if (acct.stake < minVerifierStake) revert InsufficientStake(msg.sender, acct.stake, minVerifierStake);
        acct.verifier = true;
        if (a > 0) emit Staked(msg.sender, a, acct.stake);
        emit VerifierRegistered(msg.sender, acct.stake);
        if (a > 0) _pull(msg.sender, a);
    }

    /// @notice Declares the sender's ed25519 network key with the key's 64-byte signature over
    /// the binding message (see docs/settlement.md). The chain cannot check ed25519: it only
    /// records the pair; peers verify the signature off chain before trusting the binding.
    function bindNetworkKey(bytes32 key, bytes calldata bindingSig) external {
        if (key == bytes32(0) || bindingSig.length != 64) revert BadNetworkKeyBinding();
        networkKey[msg.sender] = key;
        networkKeySig[msg.sender] = bindingSig;
        emit NetworkKeyBound(msg.sender, key, bindingSig);
    }

    // ----- payment channels -----

    /// @notice Escrows `amount` in a new channel from the sender to `provider`; the payer may
    /// ask to close it from epoch now + `timeoutEpochs`, which must exceed the claim window.
    function openChannel(address provider, uint256 amount, uint64 timeoutEpochs)
        external
        nonReentrant
        returns (bytes32 id)
    {
        if (provider == address(0) || provider == msg.sender) revert BadChannelParty(provider);
        uint128 a = _amount(amount);
        if (timeoutEpochs <= claimWindowEpochs) revert ChannelTimeoutTooShort(timeoutEpochs, claimWindowEpochs);
        uint64 expires = currentEpoch() + timeoutEpochs;
        uint64 nonce = channelNonce[msg.sender]++;
        id = channelId(msg.sender, nonce);
        channels[id] = Channel({
            payer: msg.sender,
            expiresEpoch: expires,
            provider: provider,
            closesEpoch: 0,
            closed: false,
            deposit: a,
            claimed: 0
        });
        emit ChannelOpened(id, msg.sender, provider, a, expires);
        _pull(msg.sender, a);
    }

    /// @notice Adds `amount` to an open channel; payer only, not once closing.
    function topUp(bytes32 id, uint256 amount) external nonReentrant {
        uint128 a = _amount(amount);
        Channel storage c = _channel(id);
        if (c.closed || c.closesEpoch != 0) revert ChannelIsClosed(id);
        if (c.payer != msg.sender) revert NotChannelPayer(id, msg.sender);
        c.deposit += a;
        emit ChannelToppedUp(id, a, c.deposit);
        _pull(msg.sender, a);
    }

    /// @notice The provider claims the increase of `cumulative` over what it claimed before,
    /// with the payer's EIP-712 signature over Voucher(id, cumulative). A share
    /// (`auditFeeBps`) goes to the audit pool.
    function claim(bytes32 id, uint256 cumulative, bytes calldata payerSig) external nonReentrant {
        Channel storage c = _channel(id);
        if (c.closed) revert ChannelIsClosed(id);
        uint64 epoch = currentEpoch();
        if (c.closesEpoch != 0 && epoch >= c.closesEpoch) revert ChannelIsClosed(id);
        if (c.provider != msg.sender) revert NotChannelProvider(id, msg.sender);
        address signer = _recover(voucherDigest(id, cumulative), payerSig);
        if (signer != c.payer) revert ForgedVoucher(id, signer);
        if (cumulative <= c.claimed) revert DoubleClaim(cumulative, c.claimed);
        if (cumulative > c.deposit) revert OverClaim(cumulative, c.deposit);
        uint256 increase = cumulative - c.claimed;
        c.claimed = uint128(cumulative);
        uint256 fee = (increase * auditFeeBps) / 10_000;
        auditPool += fee;
        emit VoucherClaimed(id, msg.sender, increase, cumulative, fee);
        _push(msg.sender, increase - fee);
    }

    /// @notice After the timeout the payer asks to close; the provider keeps `claimWindowEpochs`
    /// to claim, then anyone may finalize.
    function requestClose(bytes32 id) external {
        Channel storage c = _channel(id);
        if (c.closed || c.closesEpoch != 0) revert ChannelIsClosed(id);
        if (c.payer != msg.sender) revert NotChannelPayer(id, msg.sender);
        uint64 epoch = currentEpoch();
        if (epoch < c.expiresEpoch) revert ChannelNotExpired(id, c.expiresEpoch, epoch);
        c.closesEpoch = epoch + claimWindowEpochs;
        emit ChannelClosing(id, c.closesEpoch);
    }

    /// @notice Closes a channel whose claim window has passed and returns the unclaimed rest
    /// to the payer. Anyone may call it; the refund goes only to the payer.
    function finalizeClose(bytes32 id) external nonReentrant {
        Channel storage c = _channel(id);
        if (c.closed) revert ChannelIsClosed(id);
        uint64 epoch = currentEpoch();
        if (c.closesEpoch == 0 || epoch < c.closesEpoch) revert ChannelNotDue(id, c.closesEpoch, epoch);
        uint256 refund = uint256(c.deposit) - uint256(c.claimed);
        c.closed = true;
        emit ChannelClosed(id, refund);
        if (refund > 0) _push(c.payer, refund);
    }

    // ----- receipt roots -----

    /// @notice A staked provider commits to the Merkle root (BLAKE3, opaque here) of its
    /// receipts for the current epoch; one root per provider and epoch.
    function postReceiptRoot(uint64 epoch, bytes32 root, uint64 receipts) external {
        _postRoot(epoch, root, receipts, false);
    }

    /// @notice Like postReceiptRoot, for receipts that missed the roots of their epoch and the
    /// next: every leaf is audited, and the provider's unbonding stake is held until the
    /// root's verdicts can no longer land.
    function postLateRoot(uint64 epoch, bytes32 root, uint64 receipts) external {
        _postRoot(epoch, root, receipts, true);
    }

    // ----- internals -----

    function _postRoot(uint64 epoch, bytes32 root, uint64 receipts, bool full) private {
        uint64 now_ = currentEpoch();
        if (epoch != now_) revert WrongEpoch(now_, epoch);
        if (receipts == 0 || receipts > MAX_RECEIPTS) revert BadReceiptCount(receipts);
        Account storage acct = accounts[msg.sender];
        if (acct.stake < minProviderStake) revert InsufficientStake(msg.sender, acct.stake, minProviderStake);
        Root storage r = roots[msg.sender][epoch];
        if (r.receipts != 0) revert RootAlreadyPosted(msg.sender, epoch);
        r.root = root;
        r.receipts = receipts;
        r.full = full;
        emit ReceiptRootPosted(msg.sender, epoch, root, receipts, full);
        if (full && acct.unbonding != 0) {
            uint64 until = epoch + unbondingEpochs;
            if (acct.releaseEpoch < until) {
                acct.releaseEpoch = until;
                emit UnbondingHeld(msg.sender, until);
            }
        }
    }

    function _channel(bytes32 id) private view returns (Channel storage c) {
        c = channels[id];
        if (c.payer == address(0)) revert UnknownChannel(id);
    }

    function _amount(uint256 amount) private pure returns (uint128) {
        if (amount == 0) revert ZeroAmount();
        if (amount > type(uint128).max) revert AmountTooLarge(amount);
        return uint128(amount);
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    /// @dev ecrecover over a 65-byte (r, s, v) signature, refusing malleable (high-s) forms and
    /// returning address(0) for anything unrecoverable (which never matches a payer).
    function _recover(bytes32 digest, bytes calldata sig) private pure returns (address) {
        if (sig.length != 65) return address(0);
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (v < 27) v += 27;
        if (uint256(s) > SECP256K1_HALF_N || (v != 27 && v != 28)) return address(0);
        return ecrecover(digest, v, r, s);
    }

    /// @dev Pulls exactly `amount` from `from`; a token that delivers less (fee on transfer) is
    /// refused, so the contract never owes more than it holds.
    function _pull(address from, uint256 amount) private {
        uint256 before = token.balanceOf(address(this));
        _call(abi.encodeCall(IERC20.transferFrom, (from, address(this), amount)));
        uint256 received = token.balanceOf(address(this)) - before;
        if (received != amount) revert TokenBalanceMismatch(amount, received);
    }

    function _push(address to, uint256 amount) private {
        _call(abi.encodeCall(IERC20.transfer, (to, amount)));
    }

    /// @dev Calls the token and accepts `true` or no return data (tokens that return nothing).
    function _call(bytes memory data) private {
        (bool ok, bytes memory ret) = address(token).call(data);
        if (!ok || (ret.length != 0 && (ret.length != 32 || abi.decode(ret, (bool)) != true))) {
            revert TokenCallFailed();
        }
    }
}
