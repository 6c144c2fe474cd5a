// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @notice The subset of ERC-20 the settlement contract calls.
interface IERC20 {
    function balanceOf(address account) external view returns (uint256);
    function transfer(address to, uint256 value) external returns (bool);
    function transferFrom(address from, address to, uint256 value) external returns (bool);
}

/// @title AgoraSettlement
/// @notice The embedded ledger's settlement rules (crates/ledger) on an EVM chain: stake with
/// unbonding, verifier registration, payment channels in one ERC-20 with cumulative EIP-712
/// vouchers, receipt roots per epoch, and the audits: selection and assignment from a block
/// hash fixed after the roots and a verifier set frozen before it, committed and revealed
/// outcomes with fees, fraud verdicts co-signed by a second verifier (slash, bounty, refund
/// from the receipt's own channel), false alarms, and the canary's plants. See
/// docs/settlement.md.
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
        /// Share of a provider's bonded and unbonding stake slashed per confirmed fraud (bps).
        uint16 slashBps;
        /// Share of the slashed amount paid to the verifier that found the fraud (bps).
        uint16 bountyBps;
        /// Share of a verifier's stake burned when it passed a planted fraud (bps).
        uint16 lazySlashBps;
        /// Share of a verifier's stake burned for a revealed failure nothing confirmed (bps).
        uint16 falseAlarmBps;
        /// Audit probability after probation, parts per million.
        uint32 auditFloorPpm;
        /// A provider's first this many clean audits are all audited (and again after a fraud).
        uint64 probationJobs;
        /// Paid from the audit pool to the assigned verifier per revealed audit.
        uint128 auditFee;
        /// What a plant escrows.
        uint128 plantBond;
    }

    struct Account {
        uint128 stake;
        uint128 unbonding;
        uint64 releaseEpoch;
        bool verifier;
        /// Its leaves that passed a revealed audit.
        uint64 cleanAudits;
        /// Confirmed frauds against it.
        uint64 frauds;
        /// Its revealed failures not yet confirmed or expired: withdrawal waits for them.
        uint32 openAlarms;
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
        /// Refunded to the payer by fraud verdicts; never above `claimed`.
        uint128 refunded;
    }

    struct Root {
        /// keccak Merkle root over receipt leaves (see receiptLeaf).
        bytes32 root;
        uint64 receipts;
        bool full;
        /// The audit probability of each leaf, fixed when posted.
        uint32 auditPpm;
        /// A plant was opened under it (one per root).
        bool plantOpened;
    }

    /// The audit of one leaf: its commitment, then its outcome.
    struct Leaf {
        bytes32 commitment;
        /// The assigned verifier that committed (zero: no commitment).
        address verifier;
        uint64 committedEpoch;
        /// NONE, PASSED or FAILED.
        uint8 outcome;
        /// Judged by a verdict or an opened plant: never again.
        bool judged;
        /// A revealed failure awaiting a verdict or a plant.
        bool alarm;
    }

    /// A commitment to a planted fake fraud (it hides the canary provider).
    struct Plant {
        address planter;
        uint64 epoch;
        uint128 bond;
    }

    /// A fraud verdict: leaf `index` of `provider`'s root of `epoch` is the receipt leaf
    /// (receipt, channel, cost) and failed its audit.
    struct Fraud {
        address provider;
        uint64 epoch;
        uint64 index;
        /// BLAKE3 hash of the provider-signed receipt (opaque to the chain).
        bytes32 receipt;
        /// The channel the receipt names.
        bytes32 channel;
        /// The receipt's cost in base units.
        uint128 cost;
        /// Sibling path from the leaf to the root, bottom up.
        bytes32[] proof;
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
    /// @notice A second verifier signs that the leaf (receipt, channel, cost) failed its audit.
    bytes32 public constant VERDICT_TYPEHASH = keccak256(
        "Verdict(address provider,uint64 epoch,uint64 index,bytes32 receipt,bytes32 channel,uint128 cost)"
    );
    /// @notice A second verifier signs that a planted answer fails its audit.
    bytes32 public constant PLANT_CONFIRMATION_TYPEHASH =
        keccak256("PlantConfirmation(address provider,uint64 epoch,uint64 index)");
    bytes32 private constant BEACON_TAG = keccak256("agora/evm/beacon/v1");
    bytes32 private constant SELECT_TAG = keccak256("agora/evm/audit-select/v1");
    bytes32 private constant ASSIGN_TAG = keccak256("agora/evm/audit-assign/v1");
    bytes32 private constant COMMIT_TAG = keccak256("agora/evm/audit-commit/v1");
    bytes32 private constant PLANT_TAG = keccak256("agora/evm/plant/v1");
    uint32 private constant FULL_AUDIT_PPM = 1_000_000;
    uint8 private constant PASSED = 1;
    uint8 private constant FAILED = 2;
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
    // The audit rules: read them with params().
    uint16 private immutable slashBps;
    uint16 private immutable bountyBps;
    uint16 private immutable lazySlashBps;
    uint16 private immutable falseAlarmBps;
    uint32 private immutable auditFloorPpm;
    uint64 private immutable probationJobs;
    uint128 private immutable auditFee;
    uint128 private immutable plantBond;
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
    /// Audit fees taken from claims, paid to verifiers for revealed audits.
    uint256 public auditPool;
    /// Slashed and neither paid as bounty nor refunded: held by the contract for ever.
    uint256 public burned;
    /// Bonds of open plants.
    uint256 public plantBonds;
    /// Each epoch's beacon (0: not recorded yet); roots of epoch e are selected by e + 1's.
    mapping(uint64 => bytes32) public beacons;
    /// Audits by leaf key (leafKey).
    mapping(bytes32 => Leaf) public leaves;
    /// Open plants by commitment.
    mapping(bytes32 => Plant) public plants;
    /// Versions of the verifier set: version v assigns the roots of epochs setFrom[v] .. up to
    /// the next version's. The last one is the live set when it starts next epoch.
    uint64[] private setFrom;
    mapping(uint256 => address[]) private setMembers;
    /// 1 + a member's position in its version (0: not a member).
    mapping(uint256 => mapping(address => uint256)) private setPos;
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
    event BeaconRecorded(uint64 indexed epoch, bytes32 beacon, uint256 sourceBlock);
    event AuditCommitted(address indexed verifier, address indexed provider, uint64 epoch, uint64 index);
    event AuditRevealed(
        address indexed verifier, address indexed provider, uint64 epoch, uint64 index, bool passed, uint256 fee
    );
    event AlarmConfirmed(address indexed verifier, uint256 fee);
    event FalseAlarm(address indexed verifier, address indexed provider, uint64 epoch, uint64 index, uint256 slashed);
    event Slashed(
        address indexed provider,
        uint64 epoch,
        uint64 index,
        bytes32 receipt,
        uint256 amount,
        address verifier,
        uint256 bounty,
        address payer,
        uint256 refund,
        uint256 burned
    );
    event FraudPlanted(bytes32 indexed commitment);
    event PlantRevealed(
        address indexed provider, uint64 epoch, uint64 index, address lazy, uint256 slashed, address caught
    );

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
    error BeaconNotYet(uint64 epoch);
    error AuditWindow(uint64 epoch, uint256 from, uint256 to);
    error NotAssigned(address provider, uint64 epoch, uint64 index, address verifier);
    error AlreadyCommitted(address provider, uint64 epoch, uint64 index);
    error BadReveal();
    error ConflictedVerdict();
    error NotVerifier(address account);
    error BadConfirmation(address confirmer);
    error UnknownReceiptRoot(address provider, uint64 epoch);
    error BadLeafIndex(uint64 index, uint64 receipts);
    error AlreadyJudged(bytes32 leaf);
    error BadReceiptProof(bytes32 receipt);
    error UnrevealedVerdict();
    error NoAlarm(bytes32 leaf);
    error AlarmNotDue(uint64 epoch, uint256 due);
    error AlarmsOpen(address account, uint32 open);
    error PlantExists(bytes32 commitment);
    error OnePlantPerRoot(address provider, uint64 epoch);

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
        if (
            p.auditFeeBps > 10_000 || p.slashBps > 10_000 || p.bountyBps > 10_000 || p.lazySlashBps > 10_000
                || p.falseAlarmBps > 10_000
        ) revert BadParams("bps above 10000");
        if (p.auditFloorPpm > FULL_AUDIT_PPM) revert BadParams("auditFloorPpm above 1000000");
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
        slashBps = p.slashBps;
        bountyBps = p.bountyBps;
        lazySlashBps = p.lazySlashBps;
        falseAlarmBps = p.falseAlarmBps;
        auditFloorPpm = p.auditFloorPpm;
        probationJobs = p.probationJobs;
        auditFee = p.auditFee;
        plantBond = p.plantBond;
        cachedChainId = block.chainid;
        cachedDomainSeparator = _buildDomainSeparator();
        // Version 0 of the verifier set: empty, from epoch 0.
        setFrom.push(0);
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
    function params() external view returns (Params memory p) {
        p.epochBlocks = epochBlocks;
        p.unbondingEpochs = unbondingEpochs;
        p.auditWindowEpochs = auditWindowEpochs;
        p.escalationEpochs = escalationEpochs;
        p.answerEpochs = answerEpochs;
        p.claimWindowEpochs = claimWindowEpochs;
        p.minProviderStake = minProviderStake;
        p.minVerifierStake = minVerifierStake;
        p.auditFeeBps = auditFeeBps;
        p.slashBps = slashBps;
        p.bountyBps = bountyBps;
        p.lazySlashBps = lazySlashBps;
        p.falseAlarmBps = falseAlarmBps;
        p.auditFloorPpm = auditFloorPpm;
        p.probationJobs = probationJobs;
        p.auditFee = auditFee;
        p.plantBond = plantBond;
    }

    /// @notice The key of a leaf in `leaves`.
    function leafKey(address provider, uint64 epoch, uint64 index) public pure returns (bytes32) {
        return keccak256(abi.encode(provider, epoch, index));
    }

    /// @notice A receipt's leaf under a root: the BLAKE3 hash of the provider-signed receipt
    /// with the channel and cost it names, so a verdict refunds only what the receipt says.
    function receiptLeaf(bytes32 receipt, bytes32 channel, uint128 cost) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(uint8(0), receipt, channel, uint256(cost)));
    }

    /// @notice What a verifier commits to before it reveals an audit outcome.
    function auditCommitment(
        address verifier,
        address provider,
        uint64 epoch,
        uint64 index,
        bool passed,
        bytes32 salt
    ) public view returns (bytes32) {
        return keccak256(
            abi.encode(COMMIT_TAG, block.chainid, address(this), verifier, provider, epoch, index, passed, salt)
        );
    }

    /// @notice What a planter commits to for a planted fake fraud at a leaf.
    function plantCommitment(address provider, uint64 epoch, uint64 index, bytes32 salt)
        public
        view
        returns (bytes32)
    {
        return keccak256(abi.encode(PLANT_TAG, block.chainid, address(this), provider, epoch, index, salt));
    }

    /// @notice The EIP-712 digest a confirming verifier signs for a fraud verdict.
    function verdictDigest(
        address provider,
        uint64 epoch,
        uint64 index,
        bytes32 receipt,
        bytes32 channel,
        uint128 cost
    ) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(VERDICT_TYPEHASH, provider, epoch, index, receipt, channel, cost));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// @notice The EIP-712 digest a confirming verifier signs that a planted answer fails.
    function plantConfirmationDigest(address provider, uint64 epoch, uint64 index) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(PLANT_CONFIRMATION_TYPEHASH, provider, epoch, index));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// @notice The verifiers that assign the roots of `epoch`: the set frozen at its start.
    function verifierSetAt(uint64 epoch) external view returns (address[] memory) {
        return setMembers[_setAt(epoch)];
    }

    /// @notice The verifier that audits a leaf, or zero when the leaf is not selected (or its
    /// beacon cannot be drawn yet, or nobody is eligible).
    function assignee(address provider, uint64 epoch, uint64 index) external view returns (address) {
        (bytes32 b, bool ok,) = _drawBeacon(epoch + 1);
        bytes32 stored = beacons[epoch + 1];
        if (stored != 0) (b, ok) = (stored, true);
        return ok ? _assigneeUnder(b, provider, epoch, index) : address(0);
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
        if (acct.verifier && acct.stake < minVerifierStake) _setVerifier(msg.sender, false);
    }

    /// @notice Withdraws the whole unbonded bucket once its release epoch is reached.
    function withdraw() external nonReentrant {
        Account storage acct = accounts[msg.sender];
        uint128 amount = acct.unbonding;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        // A revealed failure may still cost this stake (the ledger expires it at the epoch's
        // start; here someone must call expireAlarm first).
        if (acct.openAlarms != 0) revert AlarmsOpen(msg.sender, acct.openAlarms);
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
        _setVerifier(msg.sender, true);
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
            claimed: 0,
            refunded: 0
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

    // ----- audits -----

    /// @notice Records the beacon of `epoch` (see _drawBeacon). Anyone may; the first root
    /// posted in an epoch and the first commitment that needs it record it too.
    function recordBeacon(uint64 epoch) external returns (bytes32) {
        return _beacon(epoch);
    }

    /// @notice The assigned verifier of a selected leaf commits to its outcome, as
    /// auditCommitment, in epochs e + 1 ..= e + 1 + auditWindowEpochs of the root's epoch e.
    function commitAudit(address provider, uint64 epoch, uint64 index, bytes32 commitment) external {
        uint256 e = epoch;
        _window(e + 1, e + 1 + auditWindowEpochs);
        bytes32 b = _beacon(epoch + 1);
        if (_assigneeUnder(b, provider, epoch, index) != msg.sender) {
            revert NotAssigned(provider, epoch, index, msg.sender);
        }
        Leaf storage l = leaves[leafKey(provider, epoch, index)];
        if (l.verifier != address(0)) revert AlreadyCommitted(provider, epoch, index);
        l.commitment = commitment;
        l.verifier = msg.sender;
        l.committedEpoch = currentEpoch();
        emit AuditCommitted(msg.sender, provider, epoch, index);
    }

    /// @notice In a later epoch than its commitment, up to e + 2 + auditWindowEpochs, the
    /// verifier opens it. A pass pays the audit fee now; a failure pays only once a verdict or
    /// a plant confirms it, and costs `falseAlarmBps` of the verifier's stake if nothing does.
    function revealAudit(address provider, uint64 epoch, uint64 index, bool passed, bytes32 salt)
        external
        nonReentrant
    {
        Leaf storage l = leaves[leafKey(provider, epoch, index)];
        if (
            l.verifier != msg.sender || l.outcome != 0
                || l.commitment != auditCommitment(msg.sender, provider, epoch, index, passed, salt)
        ) revert BadReveal();
        _window(uint256(l.committedEpoch) + 1, uint256(epoch) + 2 + auditWindowEpochs);
        uint256 fee;
        if (passed) {
            l.outcome = PASSED;
            accounts[provider].cleanAudits += 1;
            fee = _takeFee();
        } else {
            l.outcome = FAILED;
            l.alarm = true;
            accounts[msg.sender].openAlarms += 1;
        }
        emit AuditRevealed(msg.sender, provider, epoch, index, passed, fee);
        if (fee > 0) _push(msg.sender, fee);
    }

    /// @notice The verifier that revealed a failed audit of the leaf brings the fraud, with a
    /// second registered verifier's EIP-712 signature over it, in the verdict window
    /// e + 4 + w ..= e + 3 + w + x. The leaf must be under the provider's root; the provider
    /// loses `slashBps` of its stake: `bountyBps` of that to the sender (with its fee), the
    /// receipt's cost (capped by what its channel paid and had not refunded) to that channel's
    /// payer, the rest burned.
    function fraudVerdict(Fraud calldata v, address confirmer, bytes calldata confirmerSig) external nonReentrant {
        (Leaf storage l, Channel storage c) = _checkFraud(v, confirmer, confirmerSig);
        l.judged = true;
        uint256 fee = _confirmAlarm(l);
        uint256 slashed = _slash(v.provider, slashBps);
        accounts[v.provider].frauds += 1;
        uint256 bounty = (slashed * bountyBps) / 10_000;
        uint256 refund = _min(_min(v.cost, uint256(c.claimed) - uint256(c.refunded)), slashed - bounty);
        c.refunded += uint128(refund);
        burned += slashed - bounty - refund;
        _emitSlashed(v, slashed, bounty, c.payer, refund);
        if (fee + bounty > 0) _push(msg.sender, fee + bounty);
        if (refund > 0) _push(c.payer, refund);
    }

    /// @dev fraudVerdict's checks, in the ledger's order; returns the leaf and the receipt's
    /// channel.
    function _checkFraud(Fraud calldata v, address confirmer, bytes calldata confirmerSig)
        private
        view
        returns (Leaf storage l, Channel storage c)
    {
        if (msg.sender == confirmer || v.provider == msg.sender || v.provider == confirmer) {
            revert ConflictedVerdict();
        }
        bytes32 digest = verdictDigest(v.provider, v.epoch, v.index, v.receipt, v.channel, v.cost);
        if (_recover(digest, confirmerSig) != confirmer) revert BadConfirmation(confirmer);
        // The sender is the assigned verifier (its reveal is checked below) even if it left the
        // set since; the confirmer must be registered now.
        if (!accounts[confirmer].verifier) revert NotVerifier(confirmer);
        Root storage r = _root(v.provider, v.epoch);
        if (v.index >= r.receipts) revert BadLeafIndex(v.index, r.receipts);
        _window(uint256(v.epoch) + 4 + auditWindowEpochs, uint256(v.epoch) + 3 + auditWindowEpochs + escalationEpochs);
        bytes32 key = leafKey(v.provider, v.epoch, v.index);
        l = leaves[key];
        if (l.judged) revert AlreadyJudged(key);
        if (!_underRoot(r, v.index, receiptLeaf(v.receipt, v.channel, v.cost), v.proof)) {
            revert BadReceiptProof(v.receipt);
        }
        c = _channel(v.channel);
        if (c.provider != v.provider) revert NotChannelProvider(v.channel, v.provider);
        if (l.verifier != msg.sender || l.outcome != FAILED) revert UnrevealedVerdict();
    }

    function _emitSlashed(Fraud calldata v, uint256 slashed, uint256 bounty, address payer, uint256 refund) private {
        emit Slashed(
            v.provider, v.epoch, v.index, v.receipt, slashed, msg.sender, bounty, payer, refund, slashed - bounty - refund
        );
    }

    /// @notice A revealed failure that neither a verdict nor a plant confirmed by the end of
    /// the verdict window costs its verifier `falseAlarmBps` of its stake (burned). Anyone may
    /// call it from epoch e + 4 + w + x on; the verifier cannot withdraw until it is called.
    function expireAlarm(address provider, uint64 epoch, uint64 index) external {
        bytes32 key = leafKey(provider, epoch, index);
        Leaf storage l = leaves[key];
        if (!l.alarm) revert NoAlarm(key);
        uint256 due = uint256(epoch) + 4 + auditWindowEpochs + escalationEpochs;
        uint64 now_ = currentEpoch();
        if (now_ < due) revert AlarmNotDue(now_, due);
        l.alarm = false;
        accounts[l.verifier].openAlarms -= 1;
        uint256 slashed = _slash(l.verifier, falseAlarmBps);
        burned += slashed;
        emit FalseAlarm(l.verifier, provider, epoch, index, slashed);
    }

    /// @notice Any account commits to a planted fake fraud (plantCommitment, which hides the
    /// canary provider), escrowing `plantBond`. It must come no later than the root's epoch.
    function plant(bytes32 commitment) external nonReentrant {
        if (plants[commitment].planter != address(0)) revert PlantExists(commitment);
        plants[commitment] = Plant({planter: msg.sender, epoch: currentEpoch(), bond: plantBond});
        plantBonds += plantBond;
        emit FraudPlanted(commitment);
        if (plantBond > 0) _pull(msg.sender, plantBond);
    }

    /// @notice In the root's one plant epoch (e + 3 + w: every reveal in, no verdict yet) the
    /// provider that posted the root opens one plant under it. The leaf is judged (no verdict
    /// can slash the canary for it). The verifier that failed it takes the bond and its fee;
    /// else the bond goes back to the planter. The verifier that passed it loses
    /// `lazySlashBps` of its stake only when `confirmer`, a registered third verifier, signed
    /// plantConfirmationDigest: no single key takes anyone's stake. `confirmer` zero: none.
    function revealPlant(uint64 epoch, uint64 index, bytes32 salt, address confirmer, bytes calldata confirmerSig)
        external
        nonReentrant
    {
        if (confirmer != address(0) && _recover(plantConfirmationDigest(msg.sender, epoch, index), confirmerSig) != confirmer) {
            revert BadConfirmation(confirmer);
        }
        (Plant memory p, Leaf storage l) = _openPlant(epoch, index, salt);
        address lazy = l.outcome == PASSED && confirmer != address(0) ? l.verifier : address(0);
        address caught = l.outcome == FAILED ? l.verifier : address(0);
        uint256 slashed;
        if (lazy != address(0)) {
            if (confirmer == lazy || confirmer == msg.sender) revert ConflictedVerdict();
            if (!accounts[confirmer].verifier) revert NotVerifier(confirmer);
            slashed = _slash(lazy, lazySlashBps);
            burned += slashed;
        }
        emit PlantRevealed(msg.sender, epoch, index, lazy, slashed, caught);
        uint256 pay = p.bond + (caught != address(0) ? _confirmAlarm(l) : 0);
        if (pay > 0) _push(caught != address(0) ? caught : p.planter, pay);
    }

    /// @dev revealPlant's checks: the sender's plant at the leaf, committed no later than the
    /// root's epoch (before the beacon that selected), in the plant epoch, under the root, the
    /// first of the root, the leaf not judged. Removes the plant and judges the leaf.
    function _openPlant(uint64 epoch, uint64 index, bytes32 salt) private returns (Plant memory p, Leaf storage l) {
        bytes32 commitment = plantCommitment(msg.sender, epoch, index, salt);
        p = plants[commitment];
        if (p.planter == address(0) || p.epoch > epoch) revert BadReveal();
        uint256 at = uint256(epoch) + 3 + auditWindowEpochs;
        _window(at, at);
        Root storage r = roots[msg.sender][epoch];
        if (index >= r.receipts) revert BadReveal();
        if (r.plantOpened) revert OnePlantPerRoot(msg.sender, epoch);
        r.plantOpened = true;
        delete plants[commitment];
        plantBonds -= p.bond;
        bytes32 key = leafKey(msg.sender, epoch, index);
        l = leaves[key];
        if (l.judged) revert AlreadyJudged(key);
        l.judged = true;
    }

    // ----- internals -----

    /// @dev The beacon of epoch `e`: keccak of the hash of epoch e's first block, which is
    /// produced after every root of epoch e - 1 is in (roots are accepted only in their own
    /// epoch) and after the verifier set for them was frozen. A block hash is readable for
    /// 256 blocks; if nobody recorded it by then, the hash of the latest block congruent to
    /// it modulo 256 is used (one party delaying alone gains a re-draw only if nobody else
    /// records for 256 blocks). `ok` is false before the block exists.
    function _drawBeacon(uint64 e) private view returns (bytes32 b, bool ok, uint256 src) {
        src = startBlock + uint256(e) * epochBlocks;
        if (e == 0 || block.number <= src) return (0, false, src);
        if (block.number - src > 256) src += ((block.number - src - 1) / 256) * 256;
        b = keccak256(abi.encode(BEACON_TAG, e, blockhash(src)));
        ok = true;
    }

    function _beacon(uint64 e) private returns (bytes32 b) {
        b = beacons[e];
        if (b != 0) return b;
        bool ok;
        uint256 src;
        (b, ok, src) = _drawBeacon(e);
        if (!ok) revert BeaconNotYet(e);
        beacons[e] = b;
        emit BeaconRecorded(e, b, src);
    }

    /// @dev The ledger's rule with keccak: leaf `index` is selected when the first 8 bytes of
    /// H(beacon, provider, epoch, index), as an integer, are below ppm / 10^6 of 2^64; it goes
    /// to one member of the set frozen for `epoch`, the provider excluded.
    function _assigneeUnder(bytes32 b, address provider, uint64 epoch, uint64 index) private view returns (address) {
        Root storage r = roots[provider][epoch];
        if (index >= r.receipts) return address(0);
        uint256 draw = uint256(keccak256(abi.encode(SELECT_TAG, b, provider, epoch, index))) >> 192;
        if (draw * 1_000_000 >= uint256(r.auditPpm) << 64) return address(0);
        uint256 v = _setAt(epoch);
        address[] storage members = setMembers[v];
        uint256 n = members.length;
        uint256 self = setPos[v][provider];
        if (self != 0) n -= 1;
        if (n == 0) return address(0);
        uint256 k = uint256(keccak256(abi.encode(ASSIGN_TAG, b, provider, epoch, index))) % n;
        if (self != 0 && k >= self - 1) k += 1;
        return members[k];
    }

    /// @dev The set version that assigns roots of `epoch`.
    function _setAt(uint64 epoch) private view returns (uint256 v) {
        v = setFrom.length - 1;
        while (setFrom[v] > epoch) v--;
    }

    /// @dev Adds or removes `who` in the live set (the version that starts next epoch, copied
    /// from the one in effect on the first change of an epoch), and flags the account. Changes
    /// made in epoch e reach assignment from the roots of e + 1 on, as on the ledger.
    function _setVerifier(address who, bool on) private {
        Account storage acct = accounts[who];
        if (acct.verifier == on) return;
        acct.verifier = on;
        uint256 v = setFrom.length - 1;
        uint64 next = currentEpoch() + 1;
        if (setFrom[v] != next) {
            address[] storage from = setMembers[v];
            address[] storage to = setMembers[v + 1];
            for (uint256 i = 0; i < from.length; i++) {
                to.push(from[i]);
                setPos[v + 1][from[i]] = i + 1;
            }
            setFrom.push(next);
            v += 1;
        }
        address[] storage m = setMembers[v];
        if (on) {
            m.push(who);
            setPos[v][who] = m.length;
        } else {
            uint256 at = setPos[v][who] - 1;
            address last = m[m.length - 1];
            m[at] = last;
            setPos[v][last] = at + 1;
            m.pop();
            delete setPos[v][who];
            emit VerifierDeregistered(who);
        }
    }

    function _window(uint256 from, uint256 to) private view {
        uint64 now_ = currentEpoch();
        if (now_ < from || now_ > to) revert AuditWindow(now_, from, to);
    }

    function _root(address provider, uint64 epoch) private view returns (Root storage r) {
        r = roots[provider][epoch];
        if (r.receipts == 0) revert UnknownReceiptRoot(provider, epoch);
    }

    /// @dev agora_core::merkle's shape with keccak: leaves padded with zero to a power of two,
    /// node = keccak(0x01 || left || right); the path length is fixed by the receipt count.
    function _underRoot(Root storage r, uint64 index, bytes32 leaf, bytes32[] calldata proof)
        private
        view
        returns (bool)
    {
        uint256 depth;
        while ((uint256(1) << depth) < r.receipts) depth++;
        if (proof.length != depth) return false;
        bytes32 h = leaf;
        for (uint256 i = 0; i < depth; i++) {
            h = (index >> i) & 1 == 0
                ? keccak256(abi.encodePacked(uint8(1), h, proof[i]))
                : keccak256(abi.encodePacked(uint8(1), proof[i], h));
        }
        return h == r.root;
    }

    /// @dev Takes the audit fee (as much as the pool holds) out of the pool.
    function _takeFee() private returns (uint256 fee) {
        fee = _min(auditFee, auditPool);
        auditPool -= fee;
    }

    /// @dev A failure revealed on the leaf is confirmed: its verifier's fee, to be paid.
    function _confirmAlarm(Leaf storage l) private returns (uint256 fee) {
        if (!l.alarm) return 0;
        l.alarm = false;
        accounts[l.verifier].openAlarms -= 1;
        fee = _takeFee();
        emit AlarmConfirmed(l.verifier, fee);
    }

    /// @dev Takes `bps` of `who`'s bonded and unbonding stake, bonded first; a verifier left
    /// under the minimum stops being one. Returns the amount taken (still in the contract).
    function _slash(address who, uint16 bps) private returns (uint256 slashed) {
        Account storage a = accounts[who];
        slashed = ((uint256(a.stake) + uint256(a.unbonding)) * bps) / 10_000;
        uint256 fromBonded = _min(slashed, a.stake);
        a.stake -= uint128(fromBonded);
        a.unbonding -= uint128(slashed - fromBonded);
        if (a.verifier && a.stake < minVerifierStake) _setVerifier(who, false);
    }

    function _min(uint256 a, uint256 b) private pure returns (uint256) {
        return a < b ? a : b;
    }

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
        // Fixed now, before the beacon that selects: every leaf while on probation, after a
        // confirmed fraud, and for a late root.
        r.auditPpm = full || acct.frauds > 0 || acct.cleanAudits < probationJobs ? FULL_AUDIT_PPM : auditFloorPpm;
        emit ReceiptRootPosted(msg.sender, epoch, root, receipts, full);
        // The first root of an epoch records its beacon (which selects the previous epoch's
        // roots) while the block hash is readable.
        if (beacons[epoch] == 0) {
            (bytes32 b, bool ok, uint256 src) = _drawBeacon(epoch);
            if (ok && src == startBlock + uint256(epoch) * epochBlocks) {
                beacons[epoch] = b;
                emit BeaconRecorded(epoch, b, src);
            }
        }
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
